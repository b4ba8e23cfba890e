//! Object storage against a real S3 server on loopback: `s3s-fs` (an S3
//! server over a folder, from crates.io; `.ci/run` installs it). Each test
//! starts its own server on a free port with a fresh data folder, and fails
//! (never skips) when the binary is missing. `CLIPCOV_S3_SERVER` overrides
//! the binary's path.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::{ObjectStore, ObjectStoreExt};

use crate::util::*;

const ACCESS_KEY: &str = "clipcov-test";
const SECRET_KEY: &str = "clipcov-test-secret";
const BUCKET: &str = "datasets";

/// A running `s3s-fs`, killed on drop.
struct S3Server {
    child: Child,
    endpoint: String,
}

fn server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("CLIPCOV_S3_SERVER") {
        return PathBuf::from(p);
    }
    // Where `cargo install` put it: $CARGO_HOME/bin, by default ~/.cargo/bin.
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_default();
    let cargo_bin = cargo_home.join("bin/s3s-fs");
    if cargo_bin.is_file() {
        return cargo_bin;
    }
    PathBuf::from("s3s-fs")
}

impl S3Server {
    /// Starts a server storing its objects under `root`, with one bucket.
    fn start(root: &Path) -> S3Server {
        // s3s-fs keeps a bucket as a folder of its root.
        std::fs::create_dir_all(root.join(BUCKET)).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let bin = server_binary();
        let child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start the S3 test server {} ({e}): install it with \
                     `cargo install s3s-fs --version 0.14.1 --features binary --locked` \
                     (as .ci/run does) or point CLIPCOV_S3_SERVER at it",
                    bin.display()
                )
            });
        let server = S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "the S3 test server did not listen on port {port} within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// The environment that points clipcov at this server.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// Runs clipcov with `env` instead of any AWS settings of the caller.
    fn clipcov_with(&self, env: &[(&str, String)], args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_clipcov"));
        for (k, _) in std::env::vars() {
            if k.starts_with("AWS_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .args(args)
            .output()
            .expect("run clipcov")
    }

    fn clipcov_ok(&self, args: &[&str]) -> String {
        let out = self.clipcov_with(&self.env(), args);
        assert!(
            out.status.success(),
            "clipcov {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Downloads `key` of the bucket through the S3 API.
    fn get(&self, key: &str) -> Vec<u8> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store: Arc<dyn ObjectStore> = Arc::new(
            object_store::aws::AmazonS3Builder::new()
                .with_endpoint(&self.endpoint)
                .with_allow_http(true)
                .with_bucket_name(BUCKET)
                .with_region("us-east-1")
                .with_access_key_id(ACCESS_KEY)
                .with_secret_access_key(SECRET_KEY)
                .build()
                .unwrap(),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let path = object_store::path::Path::from(key);
            let got = store
                .get(&path)
                .await
                .unwrap_or_else(|e| panic!("{key}: {e}"));
            got.bytes().await.unwrap().to_vec()
        })
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Issue 5: the same selection read from the S3 server and from disk gives
/// identical output bytes, and a URL --out uploads exactly those bytes.
#[test]
fn selection_from_s3_matches_disk_byte_for_byte() {
    let dir = Dir::new("object-store");
    let server = S3Server::start(&dir.join("s3"));
    // Shards over 8 MiB, so the upload is multipart and the reads take
    // several ranged requests per column chunk.
    let synth = "--rows 40000 --classes 12 --dim 64 --shards 2 --seed 7";
    let (local_data, local_prompts) = synth_at(&dir.join("local"), synth);
    let remote = format!("s3://{BUCKET}/pool/v1");
    let mut args = vec!["synth"];
    args.extend(synth.split_whitespace());
    args.extend(["--out", &remote]);
    server.clipcov_ok(&args);
    let part = dir.join(&format!("s3/{BUCKET}/pool/v1/data/part-00000.parquet"));
    assert!(
        read(&part).len() > 8 << 20,
        "the shard should need a multipart upload"
    );

    let select = |data: &str, prompts: &str, out: &str, extra: &[&str]| {
        let mut a = vec![
            "select",
            "--data",
            data,
            "--prompts",
            prompts,
            "--fraction",
            "0.05",
            "--keep-columns",
            "kind",
            "--out",
            out,
        ];
        a.extend_from_slice(extra);
        server.clipcov_ok(&a)
    };
    let from_disk = dir.join("from-disk");
    select(s(&local_data), s(&local_prompts), s(&from_disk), &[]);
    let from_s3 = dir.join("from-s3");
    select(
        &format!("{remote}/data"),
        &format!("{remote}/prompts.parquet"),
        s(&from_s3),
        &[],
    );
    for f in ["clipcov/subset.parquet", "clipcov/subset.csv"] {
        assert!(
            read(&from_disk.join(f)) == read(&from_s3.join(f)),
            "{f} differs between the disk and the S3 inputs"
        );
    }
    let m: serde_json::Value =
        serde_json::from_str(&String::from_utf8(read(&from_s3.join("manifest.json"))).unwrap())
            .unwrap();
    assert_eq!(
        m["inputs"][0]["path"],
        format!("{remote}/data/part-00000.parquet")
    );

    // Results to a URL: staged in --work, uploaded, manifest with the URLs.
    let results = format!("s3://{BUCKET}/runs/nightly");
    let work = dir.join("work");
    let stdout = select(
        &format!("{remote}/data"),
        &format!("{remote}/prompts.parquet"),
        &results,
        &["--work", s(&work)],
    );
    assert!(
        stdout.contains(&format!("uploaded 6 files to {results}")),
        "{stdout}"
    );
    for f in ["clipcov/subset.parquet", "clipcov/subset.csv"] {
        assert!(
            server.get(&format!("runs/nightly/{f}")) == read(&from_disk.join(f)),
            "{f} uploaded differs from the disk run's"
        );
    }
    let m: serde_json::Value =
        serde_json::from_slice(&server.get("runs/nightly/manifest.json")).unwrap();
    assert_eq!(m["published_to"], results.as_str());
    assert_eq!(
        m["outputs"][0]["url"],
        format!("{results}/clipcov/subset.parquet")
    );
    // The method's own manifest (one per method folder) is published too.
    let per_method: serde_json::Value =
        serde_json::from_slice(&server.get("runs/nightly/clipcov/manifest.json")).unwrap();
    assert_eq!(per_method["method"], "clipcov");
    // Working state stays local.
    assert!(work.join("store").is_dir());
    assert!(!dir
        .join(&format!("s3/{BUCKET}/runs/nightly/store"))
        .exists());
}

/// A missing bucket and refused credentials: one line naming the URL and
/// what to do, exit 74; a malformed URL: exit 2.
#[test]
fn s3_failures_are_one_line_io_errors() {
    let dir = Dir::new("object-store-errors");
    let server = S3Server::start(&dir.join("s3"));
    let out = dir.join("out");
    let run = |env: &[(&str, String)], data: &str| {
        let o = server.clipcov_with(
            env,
            &[
                "select",
                "--data",
                data,
                "--clusters",
                "2",
                "--fraction",
                "0.5",
                "--out",
                s(&out),
            ],
        );
        let stderr = error_text(&o);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        (o.status.code(), stderr)
    };
    let (code, msg) = run(&server.env(), "s3://no-such-bucket/data");
    assert_eq!(code, Some(74), "{msg}");
    assert!(
        msg.starts_with("clipcov: s3://no-such-bucket/data: listing failed (HTTP 404"),
        "{msg}"
    );
    assert!(msg.contains("no such bucket"), "{msg}");

    let mut env = server.env();
    env[1].1 = "not-the-secret".into();
    let (code, msg) = run(&env, &format!("s3://{BUCKET}/data"));
    assert_eq!(code, Some(74), "{msg}");
    assert!(msg.contains("HTTP 403"), "{msg}");
    assert!(msg.contains("AWS_SECRET_ACCESS_KEY"), "{msg}");

    let (code, msg) = run(&server.env(), "s3:///data");
    assert_eq!(code, Some(2), "{msg}");
    assert!(msg.contains("not a usable URL"), "{msg}");
}
