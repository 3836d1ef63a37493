//! The broker's X.509 client-certificate authority: an Ed25519 key (its PKCS#8 kept through the
//! barrier), a self-signed CA certificate made from it deterministically (fixed name, serial and
//! validity; Ed25519 signatures are deterministic, so every node and every restart serves the same
//! CA certificate), short-lived client certificates and a CRL.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams,
    CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
};
use zeroize::Zeroizing;

use crate::CryptoError;

/// How far `notBefore` is set before now, for verifiers whose clock runs behind.
pub const SKEW_SECONDS: i64 = 60;

fn x509(error: rcgen::Error) -> CryptoError {
    CryptoError::X509(error.to_string())
}

fn at(unix_seconds: i64) -> Result<time::OffsetDateTime, CryptoError> {
    time::OffsetDateTime::from_unix_timestamp(unix_seconds)
        .map_err(|_| CryptoError::X509("a time out of range".into()))
}

/// A serial of 16 bytes, positive, from `text` (the grant's login name): the CRL can name a
/// certificate without storing its serial.
pub fn serial_for(text: &str) -> Vec<u8> {
    let mut serial: Vec<u8> = crate::sha256(text.as_bytes())
        .iter()
        .take(16)
        .copied()
        .collect();
    if let Some(first) = serial.first_mut() {
        *first &= 0x7f;
        *first |= 0x01;
    }
    serial
}

/// Checks a PEM certificate request (form and signature) before anything is recorded.
pub fn check_csr(pem: &str) -> Result<(), CryptoError> {
    if pem.len() > 16 * 1024 {
        return Err(CryptoError::X509("the CSR is too large".into()));
    }
    CertificateSigningRequestParams::from_pem(pem)
        .map(|_| ())
        .map_err(|e| CryptoError::X509(format!("not a valid PEM certificate request: {e}")))
}

pub struct X509Ca {
    params: CertificateParams,
    key: KeyPair,
    certificate_pem: String,
}

impl std::fmt::Debug for X509Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509Ca").finish_non_exhaustive()
    }
}

/// What a client certificate says.
pub struct ClientCertificate<'a> {
    /// The subject's common name.
    pub common_name: &'a str,
    /// URI subject alternative names (e.g. `urn:mayfly:grant:mf_…`, `spiffe://…`).
    pub uri_sans: &'a [String],
    /// From [`serial_for`].
    pub serial: &'a [u8],
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds: the grant's expiry.
    pub not_after: i64,
    /// A PEM certificate signing request (its signature is checked; only its public key is used),
    /// or `None` to have a P-256 key made here.
    pub csr_pem: Option<&'a str>,
}

/// An issued certificate, and the private key if it was made here (shown once).
pub struct Issued {
    pub certificate_pem: String,
    pub private_key_pem: Option<Zeroizing<String>>,
}

impl X509Ca {
    /// A new CA key, as PKCS#8 DER (to be kept through the barrier).
    pub fn generate_key() -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(x509)?;
        Ok(Zeroizing::new(key.serialize_der()))
    }

    pub fn from_pkcs8(der: &[u8]) -> Result<X509Ca, CryptoError> {
        let key = KeyPair::try_from(der).map_err(|_| CryptoError::BadKey)?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "Mayfly");
        name.push(DnType::CommonName, "Mayfly client CA");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(SerialNumber::from_slice(&serial_for(&hex::encode(
            crate::sha256(key.public_key_raw()),
        ))));
        params.not_before = at(1_735_689_600)?; // 2025-01-01
        params.not_after = at(4_102_444_800)?; // 2100-01-01
        let certificate = params.self_signed(&key).map_err(x509)?;
        Ok(X509Ca {
            certificate_pem: certificate.pem(),
            params,
            key,
        })
    }

    /// The CA certificate (PEM) servers put in their trust store for client certificates.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    pub fn issue(&self, request: &ClientCertificate<'_>) -> Result<Issued, CryptoError> {
        if request.common_name.is_empty() || request.common_name.len() > 64 {
            return Err(CryptoError::X509(
                "the common name must be 1 to 64 characters".into(),
            ));
        }
        if request.not_after <= request.not_before {
            return Err(CryptoError::X509("the validity window is empty".into()));
        }
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, request.common_name);
        params.distinguished_name = name;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(SerialNumber::from_slice(request.serial));
        params.not_before = at(request.not_before)?;
        params.not_after = at(request.not_after)?;
        for uri in request.uri_sans {
            params.subject_alt_names.push(SanType::URI(
                uri.clone()
                    .try_into()
                    .map_err(|_| CryptoError::X509("a URI SAN is not valid".into()))?,
            ));
        }
        let issuer = Issuer::from_params(&self.params, &self.key);
        match request.csr_pem {
            Some(pem) => {
                if pem.len() > 16 * 1024 {
                    return Err(CryptoError::X509("the CSR is too large".into()));
                }
                let csr = CertificateSigningRequestParams::from_pem(pem).map_err(|e| {
                    CryptoError::X509(format!("not a valid PEM certificate request: {e}"))
                })?;
                let certificate = params.signed_by(&csr.public_key, &issuer).map_err(x509)?;
                Ok(Issued {
                    certificate_pem: certificate.pem(),
                    private_key_pem: None,
                })
            }
            None => {
                let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(x509)?;
                let certificate = params.signed_by(&key, &issuer).map_err(x509)?;
                Ok(Issued {
                    certificate_pem: certificate.pem(),
                    private_key_pem: Some(Zeroizing::new(key.serialize_pem())),
                })
            }
        }
    }

    /// A CRL (PEM) of the given serials, valid from `now` for `valid_seconds`.
    pub fn crl(
        &self,
        number: u64,
        now: i64,
        valid_seconds: i64,
        serials: &[Vec<u8>],
    ) -> Result<String, CryptoError> {
        let this_update = at(now)?;
        let params = CertificateRevocationListParams {
            this_update,
            next_update: at(now.saturating_add(valid_seconds.max(1)))?,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: this_update,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let issuer = Issuer::from_params(&self.params, &self.key);
        params.signed_by(&issuer).map_err(x509)?.pem().map_err(x509)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_certificate_is_the_same_from_the_same_key() {
        let key = X509Ca::generate_key().unwrap();
        let a = X509Ca::from_pkcs8(&key).unwrap();
        let b = X509Ca::from_pkcs8(&key).unwrap();
        assert_eq!(a.certificate_pem(), b.certificate_pem());
        let other = X509Ca::from_pkcs8(&X509Ca::generate_key().unwrap()).unwrap();
        assert_ne!(a.certificate_pem(), other.certificate_pem());
    }

    #[test]
    fn issues_with_a_generated_key_and_from_a_csr() {
        let ca = X509Ca::from_pkcs8(&X509Ca::generate_key().unwrap()).unwrap();
        let sans = vec!["urn:mayfly:grant:mf_01".to_owned()];
        let serial = serial_for("mf_01");
        let issued = ca
            .issue(&ClientCertificate {
                common_name: "payments",
                uri_sans: &sans,
                serial: &serial,
                not_before: 1_800_000_000,
                not_after: 1_800_000_900,
                csr_pem: None,
            })
            .unwrap();
        assert!(
            issued
                .certificate_pem
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        assert!(issued.private_key_pem.is_some());
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let from_csr = ca
            .issue(&ClientCertificate {
                common_name: "payments",
                uri_sans: &sans,
                serial: &serial,
                not_before: 1_800_000_000,
                not_after: 1_800_000_900,
                csr_pem: Some(&csr),
            })
            .unwrap();
        assert!(from_csr.private_key_pem.is_none());
        assert!(
            ca.issue(&ClientCertificate {
                common_name: "payments",
                uri_sans: &sans,
                serial: &serial,
                not_before: 1_800_000_000,
                not_after: 1_800_000_900,
                csr_pem: Some(
                    "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
                ),
            })
            .is_err()
        );
        assert!(
            ca.crl(1, 1_800_000_000, 60, &[serial])
                .unwrap()
                .contains("X509 CRL")
        );
    }
}
