//! Generating a cluster's TLS material with rcgen: one cluster CA and one certificate per
//! node, for `raftkv tls init` and `raftkv cluster --tls`.
//!
//! Layout in the directory: `ca.pem`, `ca-key.pem`, `node-N.pem`, `node-N-key.pem`. Keys are
//! written mode 0600 (created that way, never widened), each file atomically (temp + rename),
//! so a crash never leaves half a key. What exists is reused, never regenerated: a second run
//! (a restarted `raftkv cluster --tls`) finds the same files, and a missing node certificate
//! is issued by the existing CA, so deleting one node's pair and running again rotates just
//! that node. The CA's subject is fixed ([`CA_NAME`]) so the issuer can be rebuilt from its
//! key alone, without parsing the CA certificate back.
//!
//! Node certificates name `127.0.0.1`, `::1` and `localhost` (a local cluster) plus any extra
//! names given, and are valid for both TLS server and client authentication: a node presents
//! the same certificate on its client port, its peer port, and when it dials other peers.

use super::tls::CertFiles;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The CA's common name, before the key digest (see the module doc).
pub const CA_NAME: &str = "raftkv cluster CA";
/// Names every node certificate carries.
pub const LOCAL_NAMES: [&str; 3] = ["127.0.0.1", "::1", "localhost"];

/// What [`init`] left in the directory.
#[derive(Debug, Clone)]
pub struct Generated {
    pub ca: PathBuf,
    pub ca_key: PathBuf,
    /// Node `i + 1`'s certificate and key.
    pub nodes: Vec<CertFiles>,
    /// Files written by this run (empty when everything was reused).
    pub created: Vec<PathBuf>,
}

/// The certificate and key paths of node `id` in `dir`.
pub fn node_files(dir: &Path, id: u64) -> CertFiles {
    CertFiles {
        cert: dir.join(format!("node-{id}.pem")),
        key: dir.join(format!("node-{id}-key.pem")),
    }
}

/// Makes sure `dir` holds a CA and certificates for nodes 1..=`nodes` (see the module doc).
/// `extra_names`: more DNS names or IP addresses for every node certificate issued now.
pub fn init(dir: &Path, nodes: u64, extra_names: &[String]) -> Result<Generated, String> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let ca = dir.join("ca.pem");
    let ca_key = dir.join("ca-key.pem");
    let mut created = Vec::new();
    let key = match (ca.exists(), ca_key.exists()) {
        (true, true) => {
            let pem = crate::entropy::read_key_file(&ca_key)
                .map_err(|e| format!("cannot read {}: {e}", ca_key.display()))?;
            KeyPair::from_pem(&pem)
                .map_err(|e| format!("{} is not a usable private key: {e}", ca_key.display()))?
        }
        (false, false) => {
            let key = KeyPair::generate().map_err(|e| format!("generating the CA key: {e}"))?;
            let cert = ca_params(&key)?
                .self_signed(&key)
                .map_err(|e| format!("signing the CA certificate: {e}"))?;
            write_file(&ca_key, key.serialize_pem().as_bytes(), true)?;
            write_file(&ca, cert.pem().as_bytes(), false)?;
            created.extend([ca_key.clone(), ca.clone()]);
            key
        }
        _ => {
            return Err(format!(
                "{} has only one of ca.pem and ca-key.pem: restore the other, or remove both \
                 (and every node certificate) to start a new CA",
                dir.display()
            ))
        }
    };
    let issuer = Issuer::new(ca_params(&key)?, key);
    let mut out = Vec::new();
    for id in 1..=nodes {
        let files = node_files(dir, id);
        match (files.cert.exists(), files.key.exists()) {
            (true, true) => {}
            (false, false) => {
                let key =
                    KeyPair::generate().map_err(|e| format!("generating node {id}'s key: {e}"))?;
                let cert = node_params(id, extra_names)?
                    .signed_by(&key, &issuer)
                    .map_err(|e| format!("signing node {id}'s certificate: {e}"))?;
                write_file(&files.key, key.serialize_pem().as_bytes(), true)?;
                write_file(&files.cert, cert.pem().as_bytes(), false)?;
                created.extend([files.key.clone(), files.cert.clone()]);
            }
            _ => {
                return Err(format!(
                    "node {id} has only one of {} and {}: remove the other to issue a new pair",
                    files.cert.display(),
                    files.key.display()
                ))
            }
        }
        out.push(files);
    }
    Ok(Generated {
        ca,
        ca_key,
        nodes: out,
        created,
    })
}

/// The current year, for validity periods (whole years are plenty here).
fn this_year() -> i32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    1970 + (secs / 31_556_952) as i32
}

fn serial() -> Result<SerialNumber, String> {
    let mut b = crate::entropy::bytes::<16>().map_err(|e| format!("no randomness: {e}"))?;
    b[0] &= 0x7f; // a positive integer in DER
    Ok(SerialNumber::from_slice(&b))
}

fn ca_params(key: &KeyPair) -> Result<CertificateParams, String> {
    use sha2::Digest;
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    let mut dn = DistinguishedName::new();
    let digest = sha2::Sha256::digest(key.public_key_raw());
    let tag = crate::entropy::hex(&digest[..6]);
    dn.push(DnType::CommonName, format!("{CA_NAME} {tag}"));
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let year = this_year();
    p.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    p.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
    p.serial_number = Some(serial()?);
    Ok(p)
}

fn node_params(id: u64, extra_names: &[String]) -> Result<CertificateParams, String> {
    let names: Vec<String> = LOCAL_NAMES
        .iter()
        .map(|s| s.to_string())
        .chain(extra_names.iter().cloned())
        .collect();
    let mut p = CertificateParams::new(names).map_err(|e| format!("node names: {e}"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("raftkv node {id}"));
    p.distinguished_name = dn;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let year = this_year();
    p.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    p.not_after = rcgen::date_time_ymd(year + 5, 1, 1);
    p.serial_number = Some(serial()?);
    Ok(p)
}

/// Writes `path` atomically; a private key is created mode 0600 from the start.
fn write_file(path: &Path, bytes: &[u8], private: bool) -> Result<(), String> {
    let tmp = path.with_extension("pem.tmp");
    let _ = fs::remove_file(&tmp);
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    opts.mode(if private { 0o600 } else { 0o644 });
    let err = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let mut f = opts.open(&tmp).map_err(err)?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(err)?;
    fs::rename(&tmp, path).map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generates_once_then_reuses_and_issues_missing_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let g = init(dir.path(), 2, &["db.example".into()]).unwrap();
        assert_eq!(g.created.len(), 6, "{:?}", g.created);
        for f in [&g.ca_key, &g.nodes[0].key, &g.nodes[1].key] {
            let mode = fs::metadata(f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", f.display());
        }
        let ca_before = fs::read(&g.ca).unwrap();
        let node1_before = fs::read(&g.nodes[0].cert).unwrap();
        let again = init(dir.path(), 3, &[]).unwrap();
        assert_eq!(
            again.created,
            vec![again.nodes[2].key.clone(), again.nodes[2].cert.clone()]
        );
        assert_eq!(fs::read(&again.ca).unwrap(), ca_before);
        assert_eq!(fs::read(&again.nodes[0].cert).unwrap(), node1_before);
        // The node issued on the second run chains to the same CA: a TLS config accepts it.
        let cfg = crate::net::tls::server_config(&again.nodes[2], Some(&again.ca));
        assert!(cfg.is_ok(), "{:?}", cfg.err());
    }

    #[test]
    fn half_a_pair_is_an_error_not_a_silent_regeneration() {
        let dir = tempfile::tempdir().unwrap();
        let g = init(dir.path(), 1, &[]).unwrap();
        fs::remove_file(&g.nodes[0].key).unwrap();
        let e = init(dir.path(), 1, &[]).unwrap_err();
        assert!(
            e.contains("node-1-key.pem") || e.contains("node-1.pem"),
            "{e}"
        );
        fs::remove_file(&g.ca_key).unwrap();
        let e = init(dir.path(), 1, &[]).unwrap_err();
        assert!(e.contains("ca-key.pem"), "{e}");
    }
}
