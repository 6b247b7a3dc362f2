//! Test-only: a component built for `certconn:plugin@1.0.0`, a contract this host does not run.

wit_bindgen::generate!({
    path: "wit",
    world: "certconn:plugin/ca-backend",
});

#[used]
#[link_section = "certconn-manifest"]
static MANIFEST: [u8; 62] =
    *b"name = \"contract-future\"\nversion = \"3.0.0\"\ncontract = \"1.0.0\"\n";

struct Future;

impl exports::certconn::plugin::backend::Guest for Future {
    fn describe() -> String {
        "a backend for certconn:plugin@1.0.0".into()
    }
}

export!(Future);
