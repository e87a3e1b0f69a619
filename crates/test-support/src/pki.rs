//! Certificates made in process for TLS tests: a CA, servers for 127.0.0.1 and localhost,
//! clients, written as PEM files into a temporary folder that goes when the CA and everything
//! it issued are dropped.

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::ScratchDir;

/// A test CA and the files of what it signed.
pub struct TestPki {
    dir: Arc<ScratchDir>,
    name: String,
    params: CertificateParams,
    key: KeyPair,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// A certificate and its key, as files (kept while this is).
#[derive(Debug, Clone)]
pub struct Issued {
    pub certificate: PathBuf,
    pub key: PathBuf,
    _folder: Arc<ScratchDir>,
}

impl TestPki {
    /// A new CA named `name`, its files in a fresh temporary folder.
    pub fn new(name: &str) -> Self {
        let dir = Arc::new(ScratchDir::new("relais-pki"));
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let certificate = params.self_signed(&key).expect("CA certificate");
        dir.write(&format!("{name}.pem"), &certificate.pem());
        Self {
            dir,
            name: name.to_owned(),
            params,
            key,
        }
    }

    /// The CA certificate's file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.file(&format!("{}.pem", self.name))
    }

    /// A server certificate for 127.0.0.1 and `localhost`.
    pub fn server(&self, name: &str) -> Issued {
        self.issue(name, "server", ExtendedKeyUsagePurpose::ServerAuth, true)
    }

    /// A client certificate whose common name is `name`.
    pub fn client(&self, name: &str) -> Issued {
        self.issue(name, "client", ExtendedKeyUsagePurpose::ClientAuth, false)
    }

    /// A file in the folder, with `content` (tokens, say).
    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        self.dir.write(name, content)
    }

    fn issue(
        &self,
        name: &str,
        role: &str,
        usage: ExtendedKeyUsagePurpose,
        server: bool,
    ) -> Issued {
        let key = KeyPair::generate().expect("key");
        let names = if server {
            vec!["localhost".to_owned()]
        } else {
            Vec::new()
        };
        let mut params = CertificateParams::new(names).expect("params");
        if server {
            params
                .subject_alt_names
                .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        }
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let issuer = Issuer::from_params(&self.params, &self.key);
        let certificate = params.signed_by(&key, &issuer).expect("certificate");
        let written = |suffix: &str, content: String| -> PathBuf {
            self.dir.write(&format!("{name}.{role}.{suffix}"), &content)
        };
        Issued {
            certificate: written("pem", certificate.pem()),
            key: written("key", key.serialize_pem()),
            _folder: Arc::clone(&self.dir),
        }
    }
}
