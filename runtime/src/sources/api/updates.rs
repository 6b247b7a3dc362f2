//! `/v1/updates`: the signed update feed as this instance last read it — whether it verified,
//! where the daemon and each plugin stand in their lifecycle, what each plugin's policy did —
//! and `POST /v1/updates/check` to read it now.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use super::server::{ApiError, AppState, ErrorBody};

fn updater(state: &AppState) -> Result<&std::sync::Arc<dyn crate::lifecycle::Updates>, ApiError> {
    state.updates.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no update feed is configured: add an [update] section (url, root)",
        )
    })
}

/// The update feed, and where each version stands.
#[utoipa::path(
    get,
    path = "/v1/updates",
    tag = "operations",
    responses(
        (status = 200, description = "The feed's state, each version's lifecycle and policy, and what the updater remembers (current, previous, refused versions, probation)", body = Object),
        (status = 404, description = "No update feed is configured", body = ErrorBody),
    ),
    security(("token" = []), ("read_token" = []))
)]
pub(super) async fn status(
    State(state): State<AppState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(updater(&state)?.status()))
}

/// Reads the feed now and acts on it as the policies say.
#[utoipa::path(
    post,
    path = "/v1/updates/check",
    tag = "operations",
    responses(
        (status = 200, description = "The feed was verified; the new status", body = Object),
        (status = 404, description = "No update feed is configured", body = ErrorBody),
        (status = 502, description = "The feed could not be read or verified; nothing changed", body = ErrorBody),
    ),
    security(("token" = []))
)]
pub(super) async fn check(
    State(state): State<AppState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    updater(&state)?
        .check()
        .await
        .map(Json)
        .map_err(|why| ApiError::new(StatusCode::BAD_GATEWAY, why))
}
