//! `certconn:plugin@0.1.x`, from `wit/compat/v0.1/`. The types are the 0.2 ones (unchanged
//! between the lines); each import forwards to the 0.2 implementation in `host.rs`, so both
//! lines get the same grants, policy and limits from one body of code.

use super::v0_2::certconn::plugin as current;
use crate::plugins::state::PluginState;

wasmtime::component::bindgen!({
    path: "../wit/compat/v0.1",
    world: "certconn:plugin/ca-backend",
    exports: { default: async },
        // Signing with a CA key waits for the signature trail's durable write.
        imports: { "certconn:plugin/custody.sign": async },
    with: {
        "wasi:http": wasmtime_wasi_http::p2::bindings::http,
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "certconn:plugin/types": crate::plugins::bindings::v0_2::certconn::plugin::types,
    },
});

use self::certconn::plugin::{crypto, custody, log};

/// Links the 0.1 imports (the types instance, custody, crypto, log) into `linker`.
pub fn add_to_linker(
    linker: &mut wasmtime::component::Linker<PluginState>,
) -> wasmtime::Result<()> {
    use wasmtime::component::HasSelf;
    // A 0.1 backend imports the types-only instance by its own version.
    linker.instance("certconn:plugin/types@0.1.0")?;
    custody::add_to_linker::<_, HasSelf<PluginState>>(linker, |s| s)?;
    crypto::add_to_linker::<_, HasSelf<PluginState>>(linker, |s| s)?;
    log::add_to_linker::<_, HasSelf<PluginState>>(linker, |s| s)?;
    Ok(())
}

fn custody_error(e: current::custody::CustodyError) -> custody::CustodyError {
    use current::custody::CustodyError as E;
    match e {
        E::NotGranted(h) => custody::CustodyError::NotGranted(h),
        E::Unsupported(m) => custody::CustodyError::Unsupported(m),
        E::Failed(m) => custody::CustodyError::Failed(m),
    }
}

fn crypto_error(e: current::crypto::CryptoError) -> crypto::CryptoError {
    use current::crypto::CryptoError as E;
    match e {
        E::Refused(m) => crypto::CryptoError::Refused(m),
        E::InvalidInput(m) => crypto::CryptoError::InvalidInput(m),
        E::Failed(m) => crypto::CryptoError::Failed(m),
    }
}

impl custody::Host for PluginState {
    async fn sign(
        &mut self,
        handle: String,
        algorithm: current::types::SignatureAlgorithm,
        message: Vec<u8>,
    ) -> Result<Vec<u8>, custody::CustodyError> {
        current::custody::Host::sign(self, handle, algorithm, message)
            .await
            .map_err(custody_error)
    }

    fn decrypt(
        &mut self,
        handle: String,
        padding: current::types::EncryptionPadding,
        ciphertext: Vec<u8>,
    ) -> Result<Vec<u8>, custody::CustodyError> {
        current::custody::Host::decrypt(self, handle, padding, ciphertext).map_err(custody_error)
    }

    fn public_key(&mut self, handle: String) -> Result<Vec<u8>, custody::CustodyError> {
        current::custody::Host::public_key(self, handle).map_err(custody_error)
    }

    fn certificate_chain(&mut self, handle: String) -> Result<Vec<Vec<u8>>, custody::CustodyError> {
        current::custody::Host::certificate_chain(self, handle).map_err(custody_error)
    }
}

impl crypto::Host for PluginState {
    fn digest(
        &mut self,
        algorithm: current::types::DigestAlgorithm,
        data: Vec<u8>,
    ) -> Result<Vec<u8>, crypto::CryptoError> {
        current::crypto::Host::digest(self, algorithm, data).map_err(crypto_error)
    }

    fn verify(
        &mut self,
        public_key: Vec<u8>,
        algorithm: current::types::SignatureAlgorithm,
        message: Vec<u8>,
        signature: Vec<u8>,
    ) -> Result<bool, crypto::CryptoError> {
        current::crypto::Host::verify(self, public_key, algorithm, message, signature)
            .map_err(crypto_error)
    }

    fn public_key_encrypt(
        &mut self,
        public_key: Vec<u8>,
        padding: current::types::EncryptionPadding,
        plaintext: Vec<u8>,
    ) -> Result<Vec<u8>, crypto::CryptoError> {
        current::crypto::Host::public_key_encrypt(self, public_key, padding, plaintext)
            .map_err(crypto_error)
    }

    fn symmetric_encrypt(
        &mut self,
        cipher: current::types::SymmetricCipher,
        key: Vec<u8>,
        iv: Vec<u8>,
        plaintext: Vec<u8>,
    ) -> Result<Vec<u8>, crypto::CryptoError> {
        current::crypto::Host::symmetric_encrypt(self, cipher, key, iv, plaintext)
            .map_err(crypto_error)
    }

    fn symmetric_decrypt(
        &mut self,
        cipher: current::types::SymmetricCipher,
        key: Vec<u8>,
        iv: Vec<u8>,
        ciphertext: Vec<u8>,
    ) -> Result<Vec<u8>, crypto::CryptoError> {
        current::crypto::Host::symmetric_decrypt(self, cipher, key, iv, ciphertext)
            .map_err(crypto_error)
    }

    fn random_bytes(&mut self, len: u32) -> Vec<u8> {
        current::crypto::Host::random_bytes(self, len)
    }
}

impl log::Host for PluginState {
    fn log(&mut self, level: log::Level, message: String) {
        use current::log::Level as L;
        let level = match level {
            log::Level::Trace => L::Trace,
            log::Level::Debug => L::Debug,
            log::Level::Info => L::Info,
            log::Level::Warn => L::Warn,
            log::Level::Error => L::Error,
        };
        current::log::Host::log(self, level, message)
    }
}
