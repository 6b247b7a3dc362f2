//! The RA's custody keys and certificates, across generations, so that the RA never quietly
//! expires.
//!
//! A generation is one signing RA key and certificate (and, in the NDES layout, one encryption
//! RA beside it). At two thirds of the current certificate's lifetime the next generation is
//! made from custody and announced by GetNextCACert; at five sixths it takes over GetCACert
//! and signing. Every generation not yet expired still decrypts, so a request a client
//! enveloped to the old RA before the switch is still read after it.
//!
//! The state is derived from custody alone: generation `n` is the key `<ra_key>.<n>` (`n` ≥ 2;
//! the first is `<ra_key>` itself), its encryption twin `<ra_key>-enc[.<n>]`. A restart finds
//! the same generations and the same current one; nothing else is stored. The clock is the
//! caller's (`maintain(now)`), which tests set.

use std::sync::{Arc, RwLock};

use x509_cert::name::Name;

use super::ra::RaError;
use super::settings::{RaLayout, ScepConfig};
use crate::custody::{KeyAlgorithm, KeyLocation, KeyStore, StoredKey};
use crate::pki::ca::RaUsage;
use crate::pki::{self, PkiError};

/// One RA generation.
#[derive(Clone)]
pub struct Generation {
    pub number: u32,
    /// Signs replies (and, in the single layout, receives key transport).
    pub signer: Arc<StoredKey>,
    /// Receives key transport, in the NDES layout.
    pub encryptor: Option<Arc<StoredKey>>,
    pub not_before: u64,
    pub not_after: u64,
}

impl Generation {
    /// The signing RA certificate.
    pub fn certificate(&self) -> &[u8] {
        &self.signer.chain[0]
    }

    /// What GetCACert (or GetNextCACert) publishes of this generation: the signing RA, then
    /// the encryption RA.
    pub fn certificates(&self) -> Vec<Vec<u8>> {
        let mut all = vec![self.certificate().to_vec()];
        if let Some(e) = &self.encryptor {
            all.push(e.chain[0].clone());
        }
        all
    }

    fn lifetime_point(&self, sixths: u64) -> u64 {
        self.not_before + (self.not_after.saturating_sub(self.not_before)) * sixths / 6
    }

    /// When the next generation is made and announced.
    pub fn renew_at(&self) -> u64 {
        self.lifetime_point(4)
    }

    /// When the next generation takes over.
    pub fn switch_at(&self) -> u64 {
        self.lifetime_point(5)
    }
}

struct Generations {
    current: Generation,
    next: Option<Generation>,
    /// Older generations not yet expired: they still decrypt.
    previous: Vec<Generation>,
}

/// What makes RA generations: custody, the naming, the layout and the issuing CA.
struct Maker {
    keys: Arc<KeyStore>,
    base: String,
    layout: RaLayout,
    subject: Name,
    ca: Arc<StoredKey>,
    validity_days: u32,
    /// Whether the CA key opens requests sealed for the CA certificate (`scep.decrypt_with_ca_key`).
    ca_decrypts: bool,
    /// RA certificates made since the signature trail last took them ([`RaKeys::take_made`]):
    /// making one happens under the generations' lock, recording it is async.
    made: std::sync::Mutex<Vec<Vec<u8>>>,
}

/// The RA's keys: which generation signs, which is next, which decrypt.
pub struct RaKeys {
    maker: Maker,
    state: RwLock<Generations>,
}

impl RaKeys {
    /// Finds the RA's generations in custody (making the first at first start), picks the
    /// current one for `now`, and runs one maintenance.
    pub fn open(
        sc: &ScepConfig,
        keys: Arc<KeyStore>,
        ca: Arc<StoredKey>,
        now: u64,
    ) -> Result<Self, RaError> {
        let maker = Maker {
            keys,
            base: sc.ra_key.clone(),
            layout: sc.ra_layout,
            subject: pki::dn::parse(sc.ra_subject.get_ref())
                .map_err(|e| RaError::Subject(e.to_string()))?,
            ca,
            validity_days: sc.ra_validity_days,
            ca_decrypts: sc.decrypt_with_ca_key,
            made: std::sync::Mutex::default(),
        };
        let mut all = vec![maker.generation(1, now)?];
        for number in 2.. {
            if maker
                .keys
                .get(&maker.key_name(number, RaUsage::Sign))
                .is_err()
            {
                break;
            }
            all.push(maker.generation(number, now)?);
        }
        // Generation i is current once generation i-1 has reached its switch point.
        let current = (1..all.len())
            .filter(|&i| now >= all[i - 1].switch_at())
            .max()
            .unwrap_or(0);
        let next = all.get(current + 1).cloned();
        let previous: Vec<Generation> = all[..current]
            .iter()
            .filter(|g| g.not_after > now)
            .cloned()
            .collect();
        let this = Self {
            maker,
            state: RwLock::new(Generations {
                current: all.swap_remove(current),
                next,
                previous,
            }),
        };
        this.maintain(now)?;
        Ok(this)
    }

    /// Makes and announces the next generation when it is due, switches to it when that is
    /// due, forgets expired ones, and warns when enrolment is about to stop.
    pub fn maintain(&self, now: u64) -> Result<(), RaError> {
        let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
        if st.next.is_none() && now >= st.current.renew_at() {
            let number = st.current.number + 1;
            match self.maker.generation(number, now) {
                Ok(next) => {
                    tracing::info!(
                        event_id = 4401,
                        generation = number,
                        switch_at = st.current.switch_at(),
                        "the next SCEP RA certificate is made and announced by GetNextCACert"
                    );
                    st.next = Some(next);
                }
                Err(e) => {
                    tracing::error!(event_id = 4404, generation = number, error = %crate::report::chain(&e), "could not make the next SCEP RA certificate");
                }
            }
        }
        if now >= st.current.switch_at() {
            if let Some(next) = st.next.take() {
                let old = std::mem::replace(&mut st.current, next);
                tracing::info!(
                    event_id = 4402,
                    generation = st.current.number,
                    previous = old.number,
                    "the SCEP RA switched to its next certificate; the previous one still decrypts until it expires"
                );
                st.previous.push(old);
            }
        }
        st.previous.retain(|g| g.not_after > now);
        let left = st.current.not_after.saturating_sub(now);
        if renewal_overdue(&st, now) {
            tracing::warn!(
                event_id = 4403,
                expires_in_days = left / 86_400,
                "the next SCEP RA certificate is overdue and could not be made: enrolment stops when the current one expires"
            );
        }
        Ok(())
    }

    /// Records the RA certificates made since the last call in the signature trail. They are
    /// the CA key's signatures too; they are made under the generations' lock, which no await
    /// may cross, so they are recorded right after (at start, and after each maintenance).
    pub async fn record_made(&self) {
        let made = std::mem::take(&mut *self.maker.made.lock().unwrap_or_else(|p| p.into_inner()));
        for cert in made {
            if let Err(e) = crate::custody::trail::record_host_certificate(
                &self.maker.keys,
                &self.maker.ca.name,
                &cert,
            )
            .await
            {
                tracing::error!(event_id = 4405, error = %crate::report::chain(&e), "could not record an SCEP RA certificate in the signature trail");
            }
        }
    }

    /// What `certconn status` and `/v1/health` show of the RA at `now`.
    pub fn status(&self, now: u64) -> serde_json::Value {
        let st = self.read();
        let time = |secs: u64| {
            crate::report::rfc3339_ms(i64::try_from(secs).unwrap_or(i64::MAX).saturating_mul(1000))
        };
        let left = st.current.not_after.saturating_sub(now);
        serde_json::json!({
            "generation": st.current.number,
            "not_after": time(st.current.not_after),
            "next_at": time(st.current.renew_at()),
            "switch_at": time(st.current.switch_at()),
            "next_announced": st.next.is_some(),
            "decrypting_generations": 1 + st.next.iter().count() + st.previous.len(),
            "warning": renewal_overdue(&st, now).then(|| format!(
                "the next RA certificate is overdue and could not be made; the current one expires in {} days (see the log, event 4404)",
                left / 86_400
            )),
        })
    }

    /// The generation that signs and that GetCACert publishes.
    pub fn current(&self) -> Generation {
        self.read().current.clone()
    }

    /// The generation GetNextCACert announces, once it is made.
    pub fn next(&self) -> Option<Generation> {
        self.read().next.clone()
    }

    /// Every key that may open a request's envelope, current first: each generation's RA
    /// keys (the encryption RA first in the NDES layout), and the CA key when it is RSA and
    /// `scep.decrypt_with_ca_key` allows it — clients that cannot tell the RA certificates apart
    /// fall back to the CA certificate. That is opt-in because it makes the SCEP endpoint an RSA
    /// decryption oracle for the CA key, and RSA decryption and signing are the same operation.
    pub fn decryptors(&self) -> Vec<Arc<StoredKey>> {
        let st = self.read();
        let mut all = Vec::new();
        for g in std::iter::once(&st.current)
            .chain(st.next.iter())
            .chain(st.previous.iter().rev())
        {
            all.extend(g.encryptor.iter().cloned());
            all.push(g.signer.clone());
        }
        let ca = &self.maker.ca;
        if self.maker.ca_decrypts
            && matches!(ca.key.kind(), certconn_x509::PublicKeyKind::Rsa { .. })
            && !ca.chain.is_empty()
        {
            all.push(ca.clone());
        }
        all
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Generations> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }
}

impl Maker {
    fn key_name(&self, number: u32, usage: RaUsage) -> String {
        let base = match usage {
            RaUsage::Decrypt => format!("{}-enc", self.base),
            _ => self.base.clone(),
        };
        match number {
            1 => base,
            n => format!("{base}.{n}"),
        }
    }

    /// Loads generation `number`, making whatever of it custody does not hold yet (its keys,
    /// its certificates): a crash between two steps is finished here.
    fn generation(&self, number: u32, now: u64) -> Result<Generation, RaError> {
        let signer_usage = match self.layout {
            RaLayout::Single => RaUsage::SignAndDecrypt,
            RaLayout::Ndes => RaUsage::Sign,
        };
        let signer = self.certified(number, signer_usage, now)?;
        let encryptor = match self.layout {
            RaLayout::Single => None,
            RaLayout::Ndes => Some(self.certified(number, RaUsage::Decrypt, now)?),
        };
        let (not_before, not_after) = validity(&signer.chain[0])?;
        Ok(Generation {
            number,
            signer,
            encryptor,
            not_before,
            not_after,
        })
    }

    fn certified(&self, number: u32, usage: RaUsage, now: u64) -> Result<Arc<StoredKey>, RaError> {
        let name = self.key_name(number, usage);
        let key = match self.keys.get(&name) {
            Ok(k) => k,
            Err(_) => {
                tracing::info!(key = %name, "creating an SCEP RA key");
                self.keys
                    .create(&name, KeyAlgorithm::Rsa2048, KeyLocation::Software)?
            }
        };
        if !key.chain.is_empty() {
            return Ok(key);
        }
        let ca_cert = self
            .ca
            .chain
            .first()
            .ok_or_else(|| RaError::NoCaCertificate("the SCEP CA".into()))?;
        let cert = pki::ca::ra_certificate_at(
            &key.key,
            &self.subject,
            Some((&self.ca.key, ca_cert)),
            self.validity_days,
            usage,
            now,
        )
        .map_err(RaError::Certificate)?;
        self.keys
            .set_chain(&name, vec![cert.clone(), ca_cert.clone()])?;
        self.made
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(cert);
        tracing::info!(key = %name, generation = number, "issued an SCEP RA certificate");
        Ok(self.keys.get(&name)?)
    }
}

/// Whether the next generation was due and could not be made: enrolment stops when the
/// current certificate expires, so the RA warns at every maintenance and in status.
fn renewal_overdue(st: &Generations, now: u64) -> bool {
    st.next.is_none() && now >= st.current.renew_at()
}

/// A certificate's validity, in seconds since the Unix epoch.
fn validity(cert_der: &[u8]) -> Result<(u64, u64), RaError> {
    certconn_x509::validity_of(cert_der)
        .map_err(|e| RaError::Certificate(PkiError::Invalid(format!("RA certificate: {e}"))))
}
