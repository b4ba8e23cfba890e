//! Object storage: `s3://`, `gs://`, `az://` and `http(s)://` paths, for
//! inputs and outputs (the `object_store` crate).
//!
//! A URL travels through clipcov as a `Path` (`s3://bucket/prefix/a.parquet`
//! joins and prints like a path); [`is_url`] tells the two apart. This
//! module does everything that touches a store:
//!
//! - [`list`] and [`stat`]: what the dataset discovery needs, with the
//!   ETag (or modification time and size) as the version that resume keys
//!   use instead of a file's modification time;
//! - [`RemoteFile`]: a Parquet `ChunkReader` that reads the footer and the
//!   pages it is asked for with ranged GETs, through a few read-ahead
//!   windows, so memory stays bounded whatever the object's size;
//! - [`local_copy`]: `.npy`/`.npz` files, which clipcov memory-maps, are
//!   streamed to a cache folder on disk (never whole into memory);
//! - [`publish`]: uploads a finished local output folder; every object
//!   appears only when its upload completes, `manifest.json` last.
//!
//! Credentials and endpoints come from the usual environment variables
//! (`AmazonS3Builder::from_env` and its GCS and Azure twins). Calls are
//! blocking: a small tokio runtime runs them for the synchronous readers.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, ObjectStoreScheme, RetryConfig};
use parquet::file::reader::{ChunkReader, Length};
use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};

/// Whether `p` is a URL (`scheme://...`) rather than a local path.
pub fn is_url(p: &Path) -> bool {
    let Some(s) = p.to_str() else { return false };
    match s.split_once("://") {
        Some((scheme, _)) => {
            !scheme.is_empty()
                && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        }
        None => false,
    }
}

/// The runtime that drives the object store's futures. One worker thread:
/// clipcov reads one shard at a time and waits for each request.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("clipcov-io")
            .enable_all()
            .build()
            .expect("cannot start the I/O runtime")
    })
}

/// reqwest is built without a TLS provider of its own (see Cargo.toml):
/// rustls uses ring, installed before the first client is built. Installing
/// fails harmlessly when a provider is installed already.
fn install_tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    runtime().block_on(f)
}

/// One object (or prefix) in a store.
#[derive(Clone, Debug)]
pub struct Object {
    pub store: Arc<dyn ObjectStore>,
    pub path: ObjectPath,
    /// The URL as the user wrote it, for messages.
    pub url: String,
    scheme: ObjectStoreScheme,
}

const URL_FORMS: &str =
    "expected s3://bucket/key, gs://bucket/key, az://container/key or https://host/path";

/// The environment variables that configure a scheme, for hints.
fn env_hint(scheme: &ObjectStoreScheme) -> &'static str {
    match scheme {
        ObjectStoreScheme::AmazonS3 => {
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN, AWS_REGION; AWS_ENDPOINT_URL and AWS_ALLOW_HTTP=true for an S3-compatible server)"
        }
        ObjectStoreScheme::GoogleCloudStorage => {
            "set GOOGLE_APPLICATION_CREDENTIALS (or GOOGLE_SERVICE_ACCOUNT) to a service account key file"
        }
        ObjectStoreScheme::MicrosoftAzure => {
            "set AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY (or AZURE_STORAGE_SAS_KEY)"
        }
        _ => "check the URL and that the server is reachable",
    }
}

/// Retries of transient failures: fewer and shorter than the crate's
/// defaults (10 over 3 minutes), so a dead endpoint fails within a minute.
fn retry() -> RetryConfig {
    RetryConfig {
        max_retries: 4,
        retry_timeout: Duration::from_secs(60),
        ..RetryConfig::default()
    }
}

/// Parses `url` into its store (one client per scheme and bucket, reused)
/// and the path inside it.
///
/// # Errors
/// A usage error (exit 2) for a malformed URL, an unsupported scheme, or a
/// store configuration the environment gets wrong.
pub fn locate(url: &Path) -> Result<Object> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = OnceLock::new();
    let text = url.to_string_lossy().into_owned();
    let bad = |why: String| Error::Usage(format!("{text}: not a usable URL ({why}); {URL_FORMS}"));
    let parsed = url::Url::parse(&text).map_err(|e| bad(e.to_string()))?;
    let (scheme, path) = ObjectStoreScheme::parse(&parsed).map_err(|e| bad(one_line(&e)))?;
    let path = ObjectPath::from_url_path(path).map_err(|e| bad(one_line(&e)))?;
    let base = parsed[..url::Position::BeforePath].to_string();
    install_tls_provider();
    let stores = STORES.get_or_init(Default::default);
    let mut stores = stores.lock().unwrap_or_else(|e| e.into_inner());
    let store = match stores.get(&base) {
        Some(s) => s.clone(),
        None => {
            let built: object_store::Result<Arc<dyn ObjectStore>> = match &scheme {
                ObjectStoreScheme::AmazonS3 => object_store::aws::AmazonS3Builder::from_env()
                    .with_url(&text)
                    .with_retry(retry())
                    .build()
                    .map(|s| Arc::new(s) as _),
                ObjectStoreScheme::GoogleCloudStorage => {
                    object_store::gcp::GoogleCloudStorageBuilder::from_env()
                        .with_url(&text)
                        .with_retry(retry())
                        .build()
                        .map(|s| Arc::new(s) as _)
                }
                ObjectStoreScheme::MicrosoftAzure => {
                    object_store::azure::MicrosoftAzureBuilder::from_env()
                        .with_url(&text)
                        .with_retry(retry())
                        .build()
                        .map(|s| Arc::new(s) as _)
                }
                ObjectStoreScheme::Http => object_store::http::HttpBuilder::new()
                    .with_url(&base)
                    .with_retry(retry())
                    // The client refuses plain HTTP unless told: an
                    // `http://` URL asks for it.
                    .with_client_options(
                        object_store::ClientOptions::new()
                            .with_allow_http(parsed.scheme() == "http"),
                    )
                    .build()
                    .map(|s| Arc::new(s) as _),
                other => return Err(bad(format!("scheme {other:?} is not supported"))),
            };
            let store = built.map_err(|e| {
                Error::Usage(format!(
                    "{text}: cannot configure the object store ({}); {}",
                    one_line(&e),
                    env_hint(&scheme)
                ))
            })?;
            stores.insert(base, store.clone());
            store
        }
    };
    Ok(Object {
        store,
        path,
        url: text,
        scheme,
    })
}

/// What the server said: `HTTP 404 Not Found, NoSuchBucket` when the error
/// carries a status (and an S3-style error code), else the error in one line.
fn short_cause(e: &object_store::Error) -> String {
    let text = one_line(&e.to_string());
    let after = |key: &str| text.split_once(key).map(|(_, rest)| rest);
    let status = after("status code: ").map(|r| r.split(':').next().unwrap_or(r).trim());
    let code = after("<Code>")
        .and_then(|r| r.split_once("</Code>"))
        .map(|(c, _)| c);
    match (status, code) {
        (Some(s), Some(c)) => format!("HTTP {s}, {c}"),
        (Some(s), None) => format!("HTTP {s}"),
        _ => text,
    }
}

/// An object store error as one line, without the crate's nesting noise.
fn one_line(e: &dyn std::fmt::Display) -> String {
    let s = e
        .to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    match s.char_indices().nth(300) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

impl Object {
    /// The I/O error (exit 74) for a failed `what`, with what to do.
    fn failed(&self, what: &str, e: object_store::Error) -> Error {
        use object_store::Error as E;
        let cause = short_cause(&e);
        // List requests report every status as a generic error: read it.
        let refused = matches!(e, E::PermissionDenied { .. } | E::Unauthenticated { .. })
            || [
                "401 ",
                "403 ",
                "AccessDenied",
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
            ]
            .iter()
            .any(|m| cause.contains(m));
        let missing = matches!(e, E::NotFound { .. })
            || ["404 ", "NoSuchBucket", "NoSuchKey"]
                .iter()
                .any(|m| cause.contains(m));
        let hint = if refused {
            format!(
                "the store refused the credentials: {}",
                env_hint(&self.scheme)
            )
        } else if missing {
            "check the URL: no such bucket, container or object".to_string()
        } else {
            format!(
                "check the network and the endpoint; {}",
                env_hint(&self.scheme)
            )
        };
        Error::io(
            &self.url,
            std::io::Error::other(format!("{what} failed ({cause}); {hint}")),
        )
    }

    fn child(&self, location: &ObjectPath) -> PathBuf {
        let root = self.path.as_ref();
        let rest = location.as_ref()[root.len()..].trim_start_matches('/');
        PathBuf::from(format!("{}/{rest}", self.url.trim_end_matches('/')))
    }
}

/// Size and version of a file or object: what a resume key depends on.
#[derive(Clone, Debug)]
pub struct Stat {
    pub bytes: u64,
    pub modified_unix: u64,
    /// Changes whenever the content may have: the ETag of an object (else
    /// its modification time), a file's modification time in nanoseconds.
    pub version: String,
}

fn object_stat(m: &object_store::ObjectMeta) -> Stat {
    Stat {
        bytes: m.size,
        modified_unix: m.last_modified.timestamp().max(0) as u64,
        version: m
            .e_tag
            .clone()
            .unwrap_or_else(|| m.last_modified.to_rfc3339()),
    }
}

/// The size and version of `path`, a local file or an object.
///
/// # Errors
/// An I/O error when it does not exist or cannot be reached.
pub fn stat(path: &Path) -> Result<Stat> {
    if !is_url(path) {
        let m = std::fs::metadata(path).at_path(path)?;
        let since = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .unwrap_or_default();
        return Ok(Stat {
            bytes: m.len(),
            modified_unix: since.as_secs(),
            version: since.as_nanos().to_string(),
        });
    }
    let o = locate(path)?;
    let m = block_on(o.store.head(&o.path)).map_err(|e| o.failed("reading its metadata", e))?;
    Ok(object_stat(&m))
}

/// Whether `path` (a local file or an object) exists.
pub fn exists(path: &Path) -> Result<bool> {
    if !is_url(path) {
        return Ok(path.is_file());
    }
    let o = locate(path)?;
    match block_on(o.store.head(&o.path)) {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(o.failed("reading its metadata", e)),
    }
}

/// One object found under a prefix.
#[derive(Clone, Debug)]
pub struct Listed {
    /// Its URL.
    pub path: PathBuf,
    /// Its key relative to the prefix.
    pub relative: String,
    pub stat: Stat,
}

/// Every object under the prefix `root` (recursively), or `root` itself
/// when it names one object; in no particular order.
///
/// # Errors
/// An I/O error when listing fails or nothing is there.
pub fn list(root: &Path) -> Result<Vec<Listed>> {
    let o = locate(root)?;
    let listed: Vec<object_store::Result<object_store::ObjectMeta>> =
        block_on(o.store.list(Some(&o.path)).collect::<Vec<_>>());
    let mut out = Vec::with_capacity(listed.len());
    let mut list_error = None;
    for m in listed {
        match m {
            Ok(m) => out.push(Listed {
                path: o.child(&m.location),
                relative: m.location.as_ref()[o.path.as_ref().len()..]
                    .trim_start_matches('/')
                    .to_string(),
                stat: object_stat(&m),
            }),
            Err(e) => {
                list_error = Some(e);
                break;
            }
        }
    }
    if out.is_empty() {
        // Not a prefix: perhaps one object (or a store that cannot list).
        match block_on(o.store.head(&o.path)) {
            Ok(m) => {
                let name = o.path.filename().unwrap_or_default().to_string();
                out.push(Listed {
                    path: root.to_path_buf(),
                    relative: name,
                    stat: object_stat(&m),
                });
            }
            Err(e) => return Err(o.failed("listing", list_error.unwrap_or(e))),
        }
    } else if let Some(e) = list_error {
        return Err(o.failed("listing", e));
    }
    Ok(out)
}

/// Whether the prefix `dir` holds any object.
pub fn is_prefix(dir: &Path) -> Result<bool> {
    if !is_url(dir) {
        return Ok(dir.is_dir());
    }
    let o = locate(dir)?;
    let first = block_on(async { o.store.list(Some(&o.path)).next().await });
    match first {
        None => Ok(false),
        Some(Ok(_)) => Ok(true),
        Some(Err(e)) => Err(o.failed("listing", e)),
    }
}

// ---------------------------------------------------------------- reading

/// Bytes fetched per request at least: Parquet asks for a page header,
/// then the page, then the next header, so one window serves many asks.
/// Fewer, larger requests matter: on the loopback test server 16 MiB
/// windows read a 222 MB dataset about twice as fast as 4 MiB ones.
const WINDOW_BYTES: u64 = 16 << 20;
/// Windows kept per file: one per projected column chunk being read (id,
/// image, text, a kept metadata column) with room to spare. Memory per open
/// file is at most `WINDOWS * WINDOW_BYTES` (96 MiB) plus any single
/// larger read; clipcov reads one file at a time.
const WINDOWS: usize = 6;

/// A remote Parquet file: ranged reads through a few read-ahead windows.
#[derive(Clone)]
pub struct RemoteFile {
    inner: Arc<Inner>,
}

struct Inner {
    object: Object,
    len: u64,
    /// `(start, bytes)`, most recently used last.
    windows: Mutex<VecDeque<(u64, Bytes)>>,
}

impl RemoteFile {
    /// Opens `url` (one HEAD request for its size).
    pub fn open(url: &Path) -> Result<RemoteFile> {
        let object = locate(url)?;
        let meta =
            block_on(object.store.head(&object.path)).map_err(|e| object.failed("opening", e))?;
        Ok(RemoteFile {
            inner: Arc::new(Inner {
                object,
                len: meta.size,
                windows: Mutex::new(VecDeque::new()),
            }),
        })
    }

    /// Bytes from `start`: at least `min(need, len - start)` of them, and
    /// more when a window holds more.
    fn bytes_from(&self, start: u64, need: usize) -> Result<Bytes> {
        let inner = &self.inner;
        let end = (start + need as u64).min(inner.len);
        {
            let mut w = inner.windows.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = w
                .iter()
                .position(|(s, b)| *s <= start && end <= s + b.len() as u64)
            {
                let (s, b) = w.remove(i).expect("found");
                let out = b.slice((start - s) as usize..);
                w.push_back((s, b));
                return Ok(out);
            }
        }
        let fetch_end = (start + (need as u64).max(WINDOW_BYTES)).min(inner.len);
        let o = &inner.object;
        let bytes = block_on(o.store.get_range(&o.path, start..fetch_end)).map_err(|e| {
            let err = o.failed("reading", e);
            remember_failure(&o.url, &err);
            err
        })?;
        let mut w = inner.windows.lock().unwrap_or_else(|e| e.into_inner());
        w.push_back((start, bytes.clone()));
        while w.len() > WINDOWS {
            w.pop_front();
        }
        Ok(bytes)
    }
}

/// The last read failure of each URL, so that the Parquet reader's error
/// (which only carries text) can be reported as the I/O error it was.
static FAILURES: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

fn remember_failure(url: &str, e: &Error) {
    let mut f = FAILURES.lock().unwrap_or_else(|e| e.into_inner());
    f.retain(|(u, _)| u != url);
    f.push((url.to_string(), e.to_string()));
}

/// The I/O error behind a failed read of `url`, if a read failed (taken:
/// asked twice, the second answer is `None`).
pub fn read_failure(url: &Path) -> Option<Error> {
    let url = url.to_string_lossy();
    let mut f = FAILURES.lock().unwrap_or_else(|e| e.into_inner());
    let i = f.iter().position(|(u, _)| *u == url)?;
    let (u, msg) = f.remove(i);
    let msg = msg.strip_prefix(&format!("{u}: ")).unwrap_or(&msg);
    Some(Error::io(
        u.as_str(),
        std::io::Error::other(msg.to_string()),
    ))
}

fn parquet_err(e: Error) -> parquet::errors::ParquetError {
    parquet::errors::ParquetError::External(Box::new(e))
}

impl Length for RemoteFile {
    fn len(&self) -> u64 {
        self.inner.len
    }
}

impl ChunkReader for RemoteFile {
    type T = RemoteRead;

    fn get_read(&self, start: u64) -> parquet::errors::Result<RemoteRead> {
        Ok(RemoteRead {
            file: self.clone(),
            pos: start,
        })
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        let b = self.bytes_from(start, length).map_err(parquet_err)?;
        if b.len() < length {
            return Err(parquet::errors::ParquetError::EOF(format!(
                "{}: wanted {length} bytes at {start}, the object ends at {}",
                self.inner.object.url, self.inner.len
            )));
        }
        Ok(b.slice(..length))
    }
}

/// A `Read` from an offset of a [`RemoteFile`] (page headers).
pub struct RemoteRead {
    file: RemoteFile,
    pos: u64,
}

impl Read for RemoteRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() || self.pos >= self.file.inner.len {
            return Ok(0);
        }
        let b = self
            .file
            .bytes_from(self.pos, 1)
            .map_err(std::io::Error::other)?;
        let n = b.len().min(buf.len());
        buf[..n].copy_from_slice(&b[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}

// ----------------------------------------------------------- local copies

static CACHE_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Sets the folder that [`local_copy`] downloads into (`OUT/remote-cache`).
pub fn set_cache_dir(dir: &Path) {
    *CACHE_DIR.lock().unwrap_or_else(|e| e.into_inner()) = Some(dir.to_path_buf());
}

/// `path` itself when local; for a URL, a local copy of the object, streamed
/// to the cache folder (reused while the object's version is the same).
///
/// # Errors
/// An I/O error naming the URL or the cache file.
pub fn local_copy(path: &Path) -> Result<PathBuf> {
    if !is_url(path) {
        return Ok(path.to_path_buf());
    }
    let o = locate(path)?;
    let meta = block_on(o.store.head(&o.path)).map_err(|e| o.failed("opening", e))?;
    let dir = CACHE_DIR
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("clipcov-remote-cache"));
    std::fs::create_dir_all(&dir).at_path(&dir)?;
    let key = Sha256::digest(format!("{}\n{}", o.url, object_stat(&meta).version));
    let hex: String = key[..8].iter().map(|b| format!("{b:02x}")).collect();
    let name = o.path.filename().unwrap_or("object");
    let local = dir.join(format!("{hex}-{name}"));
    if std::fs::metadata(&local).is_ok_and(|m| m.len() == meta.size) {
        return Ok(local);
    }
    crate::io::atomic::atomic_write(&local, |w| {
        block_on(async {
            let got = o
                .store
                .get(&o.path)
                .await
                .map_err(|e| o.failed("downloading", e))?;
            let mut stream = got.into_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| o.failed("downloading", e))?;
                w.write_all(&chunk).at_path(&local)?;
            }
            Ok(())
        })
    })?;
    Ok(local)
}

// -------------------------------------------------------------- uploading

/// Parts of a multipart upload; files up to this size go in one PUT.
const PART_BYTES: usize = 8 << 20;

/// Uploads the local file `from` to the object `to`. The object appears
/// only when the upload completes (a single PUT, or a multipart upload that
/// is completed last), so a reader never sees half a file.
///
/// # Errors
/// An I/O error naming the file or the URL.
pub fn upload(from: &Path, to: &Path) -> Result<()> {
    let o = locate(to)?;
    let mut file = std::fs::File::open(from).at_path(from)?;
    let size = file.metadata().at_path(from)?.len();
    if size as usize <= PART_BYTES {
        let mut buf = Vec::with_capacity(size as usize);
        file.read_to_end(&mut buf).at_path(from)?;
        block_on(o.store.put(&o.path, Bytes::from(buf).into()))
            .map_err(|e| o.failed("uploading", e))?;
        return Ok(());
    }
    block_on(async {
        let upload = o
            .store
            .put_multipart(&o.path)
            .await
            .map_err(|e| o.failed("starting the upload", e))?;
        let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut buf = vec![0u8; PART_BYTES];
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(Error::io(from, e));
                }
            };
            if let Err(e) = writer.wait_for_capacity(2).await {
                return Err(o.failed("uploading", e));
            }
            writer.write(&buf[..n]);
        }
        writer
            .finish()
            .await
            .map_err(|e| o.failed("uploading", e))?;
        Ok(())
    })
}

/// The local folder a run with a remote `--out` works in: `work` when
/// given, else a folder under the system temp dir named after the URL (so a
/// rerun finds its staged store again).
pub fn work_dir(out_url: &Path, work: Option<&Path>) -> PathBuf {
    match work {
        Some(w) => w.to_path_buf(),
        None => {
            let h = Sha256::digest(out_url.to_string_lossy().as_bytes());
            let hex: String = h[..8].iter().map(|b| format!("{b:02x}")).collect();
            std::env::temp_dir().join("clipcov-work").join(hex)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_paths() {
        for u in [
            "s3://b/k",
            "gs://b",
            "az://c/x.parquet",
            "https://h/p",
            "s3a://b/",
        ] {
            assert!(is_url(Path::new(u)), "{u}");
        }
        for p in ["data", "/tmp/x", "./s3:/b", "c:\\x", "://x", "1s://x"] {
            assert!(!is_url(Path::new(p)), "{p}");
        }
    }

    #[test]
    fn malformed_urls_are_usage_errors() {
        for u in ["s3:///key", "ftp://host/x", "s3://"] {
            let e = locate(Path::new(u)).unwrap_err();
            assert_eq!(e.exit_code(), crate::error::EXIT_USAGE, "{u}: {e}");
            assert!(e.to_string().starts_with(u), "{e}");
        }
    }

    #[test]
    fn joined_urls_stay_urls() {
        let p = Path::new("s3://bucket/pre/fix").join("a.parquet");
        assert_eq!(p.to_str().unwrap(), "s3://bucket/pre/fix/a.parquet");
        assert_eq!(
            p.with_extension("npz").to_str().unwrap(),
            "s3://bucket/pre/fix/a.npz"
        );
    }
}
