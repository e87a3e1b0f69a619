//! Ceph RGW (S3) of the native stack.

use s3::creds::Credentials;
use s3::{Bucket, BucketConfiguration, Region};

use crate::{Endpoints, UnavailableError, unique_name};

/// A reachable RGW with working credentials.
#[derive(Debug, Clone)]
pub struct RgwTestEnv {
    endpoints: Endpoints,
}

impl RgwTestEnv {
    pub(crate) async fn connect(endpoints: &Endpoints) -> Result<Self, UnavailableError> {
        install_crypto_provider();
        let env = Self {
            endpoints: endpoints.clone(),
        };
        // Listing the audit bucket proves the endpoint answers S3 and the credentials work.
        let bucket = env.bucket(&endpoints.audit_bucket);
        let endpoint = format!(
            "RGW {} (bucket {})",
            endpoints.s3_endpoint, endpoints.audit_bucket
        );
        match tokio::time::timeout(
            std::time::Duration::from_secs(15),
            bucket.list_page(String::new(), None, None, None, Some(1)),
        )
        .await
        {
            Err(_) => Err(UnavailableError::Unreachable {
                endpoint,
                detail: "no answer within 15 s".into(),
            }),
            Ok(Err(s3::error::S3Error::HttpFailWithBody(status, body))) => {
                Err(UnavailableError::Unhealthy {
                    endpoint,
                    detail: format!("a LIST failed with HTTP {status}: {body}"),
                })
            }
            Ok(Err(error)) => Err(UnavailableError::Unreachable {
                endpoint,
                detail: error.to_string(),
            }),
            Ok(Ok(_)) => Ok(env),
        }
    }

    /// The S3 region (custom endpoint, path-style) of the native RGW.
    pub fn region(&self) -> Region {
        Region::Custom {
            region: self.endpoints.s3_region.clone(),
            endpoint: self.endpoints.s3_endpoint.clone(),
        }
    }

    /// The development user's credentials.
    pub fn credentials(&self) -> Credentials {
        Credentials::new(
            Some(&self.endpoints.s3_access_key),
            Some(&self.endpoints.s3_secret_key),
            None,
            None,
            None,
        )
        .unwrap_or_else(|error| panic!("invalid S3 credentials: {error}"))
    }

    /// A handle on `name` (path-style addressing, as RGW needs without DNS).
    pub fn bucket(&self, name: &str) -> Box<Bucket> {
        Bucket::new(name, self.region(), self.credentials())
            .unwrap_or_else(|error| panic!("invalid bucket {name}: {error}"))
            .with_path_style()
    }

    /// Creates a fresh, empty bucket `{prefix}-{uuid}`.
    pub async fn create_bucket(&self, prefix: &str) -> Box<Bucket> {
        let name = unique_name(prefix);
        let response = Bucket::create_with_path_style(
            &name,
            self.region(),
            self.credentials(),
            BucketConfiguration::default(),
        )
        .await
        .unwrap_or_else(|error| panic!("creating bucket {name} failed: {error}"));
        assert!(
            response.success(),
            "creating bucket {name} failed: HTTP {} {}",
            response.response_code,
            response.response_text
        );
        response.bucket
    }
}

impl RgwTestEnv {
    /// Stops radosgw of the native stack (the monitor and OSD keep running), to simulate an
    /// RGW outage. The gateway starts again when the returned guard is ended or dropped, so a
    /// failing test never leaves the shared RGW down.
    pub fn stop_gateway(&self) -> GatewayOutage {
        let pidfile = self.endpoints.state_dir.join("ceph/run/rgw.daemon.pid");
        let pid = std::fs::read_to_string(&pidfile).unwrap_or_else(|error| {
            panic!(
                "cannot read {}: {error} (is RGW from `make infra-up`?)",
                pidfile.display()
            )
        });
        let status = std::process::Command::new("kill")
            .args(["-TERM", pid.trim()])
            .status()
            .expect("kill");
        assert!(
            status.success(),
            "could not stop radosgw (pid {})",
            pid.trim()
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::path::Path::new(&format!("/proc/{}", pid.trim())).exists()
            && !std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
                .is_ok_and(|stat| stat.contains(") Z "))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "radosgw did not stop within 30 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        GatewayOutage {
            env: Some(self.clone()),
        }
    }

    /// Starts radosgw again through the native stack's script, HTTPS endpoint included
    /// (waits until S3 answers).
    fn start_gateway(&self) {
        let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/native/ceph.sh");
        let status = std::process::Command::new("bash")
            .arg(script)
            .arg("start")
            .env("RELAIS_STATE_DIR", &self.endpoints.state_dir)
            .status()
            .expect("deploy/native/ceph.sh");
        assert!(status.success(), "radosgw did not start again");
    }
}

/// An RGW outage in progress; see [`RgwTestEnv::stop_gateway`].
#[derive(Debug)]
pub struct GatewayOutage {
    env: Option<RgwTestEnv>,
}

impl GatewayOutage {
    /// Ends the outage: radosgw is started and answers S3 again when this returns.
    pub fn end(mut self) {
        if let Some(env) = self.env.take() {
            env.start_gateway();
        }
    }
}

impl Drop for GatewayOutage {
    fn drop(&mut self) {
        if let Some(env) = self.env.take() {
            env.start_gateway();
        }
    }
}

/// reqwest is built without a default TLS provider (to avoid compiling aws-lc); the process
/// must pick one before any client exists. Installing twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
