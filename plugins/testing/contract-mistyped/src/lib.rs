//! Test-only: a component exporting `certconn:plugin/backend@0.2.0` with every function of the
//! contract, each of another type than the contract's.

wit_bindgen::generate!({
    path: "wit",
    world: "certconn:plugin/ca-backend",
});

#[used]
#[link_section = "certconn-manifest"]
static MANIFEST: [u8; 64] =
    *b"name = \"contract-mistyped\"\nversion = \"0.1.0\"\ncontract = \"0.2.0\"\n";

struct Mistyped;

impl exports::certconn::plugin::backend::Guest for Mistyped {
    fn describe() -> String {
        "not a backend-info".into()
    }
    fn configure(settings: String) -> String {
        settings
    }
    fn issue(request: String) -> String {
        request
    }
    fn poll(job_id: String, _token: String) -> String {
        job_id
    }
    fn revoke(request: String) -> String {
        request
    }
    fn check_import(request: String) -> String {
        request
    }
    fn health() -> String {
        "ok".into()
    }
}

export!(Mistyped);
