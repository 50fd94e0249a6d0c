//! The control plane's PKI, generated with rcgen (ECDSA P-256, ring).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

use crate::{TestEnvError, io_err};

/// Paths of the PEM files written into the env's `pki/` directory.
#[derive(Debug, Clone)]
pub(crate) struct Pki {
    pub(crate) ca_cert: PathBuf,
    pub(crate) serving_cert: PathBuf,
    pub(crate) serving_key: PathBuf,
    pub(crate) admin_cert: PathBuf,
    pub(crate) admin_key: PathBuf,
    /// Service-account token signing key (PKCS#8) and its public key (SPKI).
    pub(crate) sa_key: PathBuf,
    pub(crate) sa_pub: PathBuf,
}

/// Subject alternative names of the kube-apiserver serving certificate.
const SERVING_SANS: &[&str] = &[
    "127.0.0.1",
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
    // First address of --service-cluster-ip-range: the `kubernetes` Service's ClusterIP.
    "10.96.0.1",
];

/// Writes the PKI into `dir`; `extra_ips` are added to the serving certificate's SANs.
pub(crate) fn generate(dir: &Path, extra_ips: &[std::net::IpAddr]) -> Result<Pki, TestEnvError> {
    std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    let write = |name: &str, pem: String| -> Result<PathBuf, TestEnvError> {
        let path = dir.join(name);
        std::fs::write(&path, pem).map_err(io_err(format!("writing {}", path.display())))?;
        Ok(path)
    };

    // CA.
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name.push(DnType::CommonName, "strait-testenv-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca = Issuer::new(ca_params, ca_key);

    // kube-apiserver serving certificate.
    let serving_key = KeyPair::generate()?;
    // rcgen turns names that parse as IP addresses into IP SANs.
    let sans: Vec<String> =
        SERVING_SANS.iter().map(|s| s.to_string()).chain(extra_ips.iter().map(|ip| ip.to_string())).collect();
    let mut params = CertificateParams::new(sans)?;
    params.distinguished_name.push(DnType::CommonName, "kube-apiserver");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_cert = params.signed_by(&serving_key, &ca)?;

    // Admin client certificate: system:masters.
    let admin_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, "strait-admin");
    params.distinguished_name.push(DnType::OrganizationName, "system:masters");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let admin_cert = params.signed_by(&admin_key, &ca)?;

    // Service-account token signing key (ES256).
    let sa_key = KeyPair::generate()?;

    Ok(Pki {
        ca_cert: write("ca.crt", ca_cert.pem())?,
        serving_cert: write("apiserver.crt", serving_cert.pem())?,
        serving_key: write("apiserver.key", serving_key.serialize_pem())?,
        admin_cert: write("admin.crt", admin_cert.pem())?,
        admin_key: write("admin.key", admin_key.serialize_pem())?,
        sa_key: write("sa.key", sa_key.serialize_pem())?,
        sa_pub: write("sa.pub", sa_key.public_key_pem())?,
    })
}
