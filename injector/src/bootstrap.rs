//! Bootstrap certificates: without cert-manager, the injector makes its own CA and
//! serving certificate, keeps them in a Secret (so every replica serves the same
//! certificate and a restart does not rotate it), and writes the CA into the
//! `caBundle` of Strait's MutatingWebhookConfiguration.
use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("Secret {0} exists but lacks ca.crt, tls.crt or tls.key")]
    IncompleteSecret(String),
    #[error("MutatingWebhookConfiguration {0} has no webhooks to patch")]
    NoWebhooks(String),
}

/// PEM-encoded CA, serving certificate and key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Certs {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// DNS names the API server may use for the injector Service.
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// A fresh CA and a serving certificate it signed for `names` (and 127.0.0.1).
pub fn generate(names: &[String]) -> Result<Certs, rcgen::Error> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "strait-injector-ca");
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);

    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    params.subject_alt_names.push(rcgen::SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    params.distinguished_name.push(rcgen::DnType::CommonName, names.first().cloned().unwrap_or_default());
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Certs { ca_pem: ca_cert.pem(), cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

fn from_secret(s: &Secret) -> Option<Certs> {
    let data = s.data.as_ref()?;
    let get = |k: &str| data.get(k).and_then(|b| String::from_utf8(b.0.clone()).ok());
    Some(Certs { ca_pem: get("ca.crt")?, cert_pem: get("tls.crt")?, key_pem: get("tls.key")? })
}

/// The certificates in Secret `name`, created on first use. Replicas racing to create
/// it converge on whichever write won.
pub async fn ensure_secret(
    client: Client,
    namespace: &str,
    name: &str,
    names: &[String],
) -> Result<Certs, BootstrapError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    if let Some(existing) = api.get_opt(name).await? {
        return from_secret(&existing).ok_or_else(|| BootstrapError::IncompleteSecret(name.to_owned()));
    }
    let certs = generate(names)?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([("app.kubernetes.io/part-of".to_owned(), "strait".to_owned())])),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(BTreeMap::from([
            ("ca.crt".to_owned(), ByteString(certs.ca_pem.clone().into_bytes())),
            ("tls.crt".to_owned(), ByteString(certs.cert_pem.clone().into_bytes())),
            ("tls.key".to_owned(), ByteString(certs.key_pem.clone().into_bytes())),
        ])),
        ..Secret::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(certs),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let won = api.get(name).await?;
            from_secret(&won).ok_or_else(|| BootstrapError::IncompleteSecret(name.to_owned()))
        }
        Err(e) => Err(e.into()),
    }
}

/// Sets `caBundle` on every webhook of the configuration.
pub async fn patch_ca_bundle(client: Client, config_name: &str, ca_pem: &str) -> Result<usize, BootstrapError> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    let current = api.get(config_name).await?;
    let count = current.webhooks.as_ref().map_or(0, Vec::len);
    if count == 0 {
        return Err(BootstrapError::NoWebhooks(config_name.to_owned()));
    }
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let ops: Vec<serde_json::Value> = (0..count)
        .map(|i| serde_json::json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": bundle}))
        .collect();
    let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops))
        .map_err(|e| BootstrapError::Kube(kube::Error::SerdeError(e)))?;
    api.patch(config_name, &PatchParams::default(), &Patch::<()>::Json(patch)).await?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_chain_verifies_for_the_service_names() {
        let names = service_dns_names("strait-injector", "strait-system");
        let certs = generate(&names).expect("generate");
        assert!(certs.ca_pem.contains("BEGIN CERTIFICATE"));
        // The serving pair loads into rustls.
        let key = crate::tls::certified_key_from_pem(certs.cert_pem.as_bytes(), certs.key_pem.as_bytes(), "c", "k")
            .expect("usable by rustls");
        // And it verifies against the CA for the Service's DNS name.
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from_pem_slice(certs.ca_pem.as_bytes()).expect("ca"))
            .expect("add");
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .expect("verifier");
        let name = rustls::pki_types::ServerName::try_from("strait-injector.strait-system.svc").expect("name");
        use rustls::client::danger::ServerCertVerifier;
        verifier
            .verify_server_cert(&key.cert[0], &[], &name, &[], rustls::pki_types::UnixTime::now())
            .expect("chain verifies");
    }
}
