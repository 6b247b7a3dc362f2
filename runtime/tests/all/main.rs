//! certconn's integration tests, in one binary (as wasmtime does): the suite links wasmtime and
//! aws-lc once instead of once per file. Each module is one area; `common` starts real daemons
//! and talks to them. Plugins must be built beforehand (`scripts/build-plugins`); a test never
//! starts a build.

mod common;

mod api_tls;
mod bad_input;
mod bench_smoke;
mod certmonger;
mod cli;
mod cms_seal;
mod conformance;
mod contracts;
mod crash_recovery;
mod custody_at_rest;
mod deb_package;
mod events;
mod fips_mode;
mod fleet;
mod fuzz_smoke;
mod intune;
mod issue_openssl;
mod keys_cli;
mod metrics;
mod ndes_backend;
mod openapi;
mod pfx_import;
mod pkcs11_custody;
mod pkcs12_read;
mod plugin_lifecycle;
mod poison_job;
mod proxy;
mod reload;
mod retention;
mod revocation;
mod routing;
mod sandbox;
mod scep_backend;
mod scep_messages;
mod scep_server;
mod status_page;
mod systemd;
mod updates;
mod upstream;
