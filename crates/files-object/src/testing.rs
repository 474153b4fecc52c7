//! An S3 API server for tests: moto's (`moto_server`, from PyPI: `pip install 'moto[server]'`;
//! `CONFAB_MOTO_SERVER` names the program), on a free loopback port. Without it a test skips visibly
//! (one `SKIPPED` line on stderr), or fails with `CONFAB_REQUIRE_S3=1`.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `moto_server` on a free loopback port, killed when dropped.
pub struct Moto {
    child: Child,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// `None` (after a visible skip line) when moto's server is not installed.
    pub fn start() -> Option<Moto> {
        let program = std::env::var("CONFAB_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let spawned = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                if std::env::var("CONFAB_REQUIRE_S3").is_ok_and(|v| v == "1") {
                    panic!("CONFAB_REQUIRE_S3=1 but {program} cannot start: {e}");
                }
                let thread = std::thread::current();
                let test = thread.name().unwrap_or("a test");
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED {test}: {program} cannot start ({e}); run pip install 'moto[server]'"
                );
                return None;
            }
        };
        let moto = Moto { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(moto)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn create_bucket(&self, name: &str) {
        let r = reqwest::Client::new()
            .put(format!("{}/{name}", self.endpoint()))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "create bucket: {}", r.status());
    }
}

/// What the S3 backend reads for credentials, set once for the tests of this process (moto takes any).
pub fn test_credentials() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: set once, before any test of this crate reads the environment's AWS variables.
    ONCE.call_once(|| unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "confab-test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "confab-test-secret");
    });
}
