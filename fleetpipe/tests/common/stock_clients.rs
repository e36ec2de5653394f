//! Stock MQTT clients, run as a device would run them: paho-mqtt for
//! Python (PyPI, in a virtualenv under the target directory) and
//! Mosquitto's `mosquitto_pub`/`mosquitto_sub` (Debian's mosquitto-clients).
//! `scripts/test.sh` installs both; a test run without the virtualenv makes
//! it here (`python3 -m venv`, then pip), once per test binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

/// The paho-mqtt release the tests run.
pub const PAHO_MQTT: &str = "paho-mqtt==2.2.0";

/// The virtualenv's Python, with paho-mqtt installed.
pub fn paho_python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("paho-mqtt-2.2.0");
            let python = venv.join("bin/python");
            let installed = std::process::Command::new(&python)
                .args(["-c", "import paho.mqtt"])
                .status()
                .is_ok_and(|s| s.success());
            if !installed {
                let status = std::process::Command::new("python3")
                    .args(["-m", "venv"])
                    .arg(&venv)
                    .status()
                    .expect("python3 runs (apt-get install python3-venv)");
                assert!(status.success(), "python3 -m venv {}", venv.display());
                let status = std::process::Command::new(venv.join("bin/pip"))
                    .args(["install", "-q", PAHO_MQTT])
                    .status()
                    .expect("pip runs");
                assert!(status.success(), "pip install {PAHO_MQTT}");
            }
            python
        })
        .clone()
}

/// What a client program printed and how it ended.
#[derive(Debug)]
pub struct Run {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The printed lines.
    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }
}

/// Runs `program args`, killed after `timeout`.
pub async fn run(program: &Path, args: &[&str], timeout: Duration) -> Run {
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let output = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{} {args:?} still running after {timeout:?}",
                program.display()
            )
        })
        .expect("client output");
    Run {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs a Python program with paho-mqtt; `args` become `sys.argv[1:]`.
pub async fn paho(script: &str, args: &[&str], timeout: Duration) -> Run {
    let mut all = vec!["-c", script];
    all.extend_from_slice(args);
    run(&paho_python(), &all, timeout).await
}

/// Runs `mosquitto_pub` or `mosquitto_sub`.
pub async fn mosquitto(tool: &str, args: &[&str], timeout: Duration) -> Run {
    run(Path::new(tool), args, timeout).await
}
