//! A real S3-compatible server for tests: the standalone server of PyPI's `moto`, started on a
//! free loopback port, killed on drop; with authentication on ([`Moto::start_authenticating`])
//! or off ([`Moto::start`]: moto 5 with authentication on refuses the signature of every list
//! request whose prefix holds a `/`, boto3's as well as Kiln's, getmoto/moto#5948, and Kiln
//! lists prefixes so). `.ci/run` installs it into a
//! virtual environment and exports `KILN_TEST_MOTO` (the `moto_server` program); elsewhere
//! the tests look at `/opt/kiln-ci-venv/bin/moto_server`, then on `PATH`, and skip with a
//! reason when it is nowhere, unless `CI` is set, where its absence fails. Buckets, users and
//! objects are made with boto3 from moto's own Python, independently of Kiln. Used as
//! `#[path = "util/moto.rs"] mod moto;`, and by `cargo xtask bench`, which calls the
//! fallible [`find_moto`], [`Moto::launch`] and [`Moto::upload`] so that a missing or broken
//! moto leaves its section unmeasured instead of failing the run.

#![allow(dead_code)] // Each test binary uses its own subset.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Creates the user `kiln` allowed everything on S3, and its access key (the three actions
/// moto runs before it starts checking credentials), then prints the key.
const SETUP: &str = r#"
import json, sys, boto3
iam = boto3.client("iam", endpoint_url=sys.argv[1], region_name="us-east-1",
                   aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
iam.create_user(UserName="kiln")
policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
iam.put_user_policy(UserName="kiln", PolicyName="s3", PolicyDocument=json.dumps(policy))
key = iam.create_access_key(UserName="kiln")["AccessKey"]
print(key["AccessKeyId"], key["SecretAccessKey"])
"#;

/// Uploads the files below a directory (hidden ones too) to a bucket under a prefix, creating
/// the bucket if needed: `put ENDPOINT KEY SECRET BUCKET DIR PREFIX`.
const PUT: &str = r#"
import os, sys, boto3
endpoint, key, secret, bucket, root, prefix = sys.argv[1:7]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id=key, aws_secret_access_key=secret)
if bucket not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
    s3.create_bucket(Bucket=bucket)
for directory, _, names in os.walk(root):
    for name in names:
        path = os.path.join(directory, name)
        with open(path, "rb") as f:
            s3.put_object(Bucket=bucket, Key=prefix + os.path.relpath(path, root), Body=f.read())
"#;

/// How to install moto's server where `.ci/run` has not.
pub const INSTALL: &str = "python3 -m venv /opt/kiln-ci-venv && /opt/kiln-ci-venv/bin/pip install 'moto[server]'";

/// Where moto's server is: `KILN_TEST_MOTO`, the CI virtual environment, or `PATH`.
pub fn find_moto() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("KILN_TEST_MOTO").filter(|path| !path.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let venv = PathBuf::from("/opt/kiln-ci-venv/bin/moto_server");
    if venv.is_file() {
        return Some(venv);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("moto_server")).find(|candidate| candidate.is_file())
}

/// A running moto server with one user's access key.
pub struct Moto {
    pub endpoint: String,
    pub key_id: String,
    pub secret: String,
    python: PathBuf,
    child: Child,
}

impl Moto {
    /// Starts moto accepting any credentials, or answers `None` after saying why the test is
    /// skipped. Under CI (`CI` or `KILN_TEST_MOTO` set) a missing moto fails instead.
    pub fn start() -> Option<Moto> {
        Moto::start_with(false)
    }

    /// [`Moto::start`] with authentication on: only the key of the user it makes is accepted.
    pub fn start_authenticating() -> Option<Moto> {
        Moto::start_with(true)
    }

    fn start_with(authenticating: bool) -> Option<Moto> {
        let Some(program) = find_moto() else {
            let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "0" && v != "false");
            assert!(
                !ci && std::env::var_os("KILN_TEST_MOTO").is_none(),
                "moto_server is missing: .ci/run installs it ({INSTALL}) and exports KILN_TEST_MOTO"
            );
            eprintln!("SKIPPED: no moto_server (set KILN_TEST_MOTO, or: {INSTALL})");
            return None;
        };
        Some(Moto::launch(&program, authenticating).unwrap_or_else(|why| panic!("{why}")))
    }

    /// Starts `program` (moto's server) on a free loopback port and waits until it listens;
    /// with `authenticating`, makes the user whose key it then accepts. Says why it failed.
    pub fn launch(program: &Path, authenticating: bool) -> Result<Moto, String> {
        let python = program.with_file_name("python3");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free loopback port for moto_server: {e}"))?
            .port();
        let mut command = Command::new(program);
        command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        if authenticating {
            // Three unauthenticated actions make the user and its key; every later request
            // must be signed with a key moto issued.
            command.env("INITIAL_NO_AUTH_ACTION_COUNT", "3");
        } else {
            command.env_remove("INITIAL_NO_AUTH_ACTION_COUNT");
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        let mut moto = Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
            key_id: "kiln-test".to_owned(),
            secret: "kiln-test-secret".to_owned(),
            python,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() >= deadline {
                return Err(format!("moto_server did not listen on port {port} within a minute"));
            }
            if !matches!(moto.child.try_wait(), Ok(None)) {
                return Err(format!("{} exited at start (run it by hand to see why)", program.display()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !authenticating {
            return Ok(moto);
        }
        let output = moto.python(SETUP, &[&moto.endpoint.clone()])?;
        let mut words = output.split_whitespace();
        moto.key_id = words.next().ok_or("moto made no access key id")?.to_owned();
        moto.secret = words.next().ok_or("moto made no secret access key")?.to_owned();
        Ok(moto)
    }

    fn python(&self, script: &str, args: &[&str]) -> Result<String, String> {
        let output = Command::new(&self.python)
            .arg("-c")
            .arg(script)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.python.display()))?;
        if !output.status.success() {
            return Err(format!("boto3 failed: {}", String::from_utf8_lossy(&output.stderr)));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Uploads the files below `dir` to `bucket` under `prefix` (`data/`), creating the bucket.
    pub fn put(&self, bucket: &str, dir: &Path, prefix: &str) {
        self.upload(bucket, dir, prefix).unwrap_or_else(|why| panic!("{why}"));
    }

    /// [`Moto::put`], saying why it failed.
    pub fn upload(&self, bucket: &str, dir: &Path, prefix: &str) -> Result<(), String> {
        let dir = dir.to_str().ok_or_else(|| format!("{} is not UTF-8", dir.display()))?;
        let args = [self.endpoint.as_str(), &self.key_id, &self.secret, bucket, dir, prefix];
        self.python(PUT, &args).map(drop)
    }

    /// The AWS environment of daemons that read this server with this key (or another secret).
    pub fn env(&self, secret: &str) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_ACCESS_KEY_ID", self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", secret.to_owned()),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
        ]
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
