#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| certconn::app::fuzzing::scep_request(data));
