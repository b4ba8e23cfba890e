//! Plain `http://` inputs against a local Python web server on loopback:
//! a Parquet shard read with range requests, and the prompts.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

/// Python's `http.server` answers every GET with the whole file; this
/// handler adds single byte ranges (`206 Partial Content`), as web servers
/// serving datasets do, and logs each request with its `Range` header.
const SERVER: &str = r#"
import http.server, os, re, sys
class H(http.server.SimpleHTTPRequestHandler):
    def send_head(self):
        rng = self.headers.get('Range')
        path = self.translate_path(self.path)
        self._left = None
        if rng is None or not os.path.isfile(path):
            return super().send_head()
        m = re.match(r'bytes=(\d*)-(\d*)$', rng)
        size = os.path.getsize(path)
        if m.group(1) == '':
            start, end = size - int(m.group(2)), size - 1
        else:
            start = int(m.group(1))
            end = min(int(m.group(2)) if m.group(2) else size - 1, size - 1)
        f = open(path, 'rb')
        f.seek(start)
        self.send_response(206)
        self.send_header('Content-Type', 'application/octet-stream')
        self.send_header('Content-Range', f'bytes {start}-{end}/{size}')
        self.send_header('Content-Length', str(end - start + 1))
        self.send_header('Last-Modified', self.date_time_string(os.path.getmtime(path)))
        self.end_headers()
        self._left = end - start + 1
        return f
    def copyfile(self, src, dst):
        if self._left is None:
            return super().copyfile(src, dst)
        dst.write(src.read(self._left))
    def log_message(self, fmt, *args):
        sys.stderr.write(f"{self.command} {self.path} range={self.headers.get('Range')}\n")
        sys.stderr.flush()
os.chdir(sys.argv[1])
s = http.server.ThreadingHTTPServer(('127.0.0.1', 0), H)
with open(sys.argv[2] + '.tmp', 'w') as f:
    f.write(str(s.server_address[1]))
os.rename(sys.argv[2] + '.tmp', sys.argv[2])
s.serve_forever()
"#;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Serves `root` on a free loopback port; returns the server and its base
/// URL. The request log goes to `log`.
fn serve(root: &Path, log: &Path) -> (Server, String) {
    let port_file = root.with_extension("port");
    let child = Command::new("python3")
        .args(["-c", SERVER, s(root), s(&port_file)])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("python3");
    let server = Server(child);
    let t = Instant::now();
    while !port_file.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let port = std::fs::read_to_string(&port_file).unwrap();
    (server, format!("http://127.0.0.1:{}", port.trim()))
}

#[test]
fn plain_http_inputs_are_read_with_range_requests() {
    let dir = Dir::new("http-inputs");
    let (data, prompts) = write_data(&dir.path, &make_data(300, 8, 3, 2), 1, false);
    let shard = data.join("part=00/shard.parquet");
    let root = dir.join("srv");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::copy(&shard, root.join("shard.parquet")).unwrap();
    std::fs::copy(&prompts, root.join("prompts.parquet")).unwrap();
    let log = dir.join("server.log");
    let (_server, base) = serve(&root, &log);

    let local = dir.join("local");
    clipcov_ok(&[
        "select",
        "--data",
        s(&shard),
        "--prompts",
        s(&prompts),
        "--fraction",
        "0.2",
        "--out",
        s(&local),
    ]);
    let remote = dir.join("remote");
    let url_shard = format!("{base}/shard.parquet");
    let url_prompts = format!("{base}/prompts.parquet");
    clipcov_ok(&[
        "select",
        "--data",
        &url_shard,
        "--prompts",
        &url_prompts,
        "--fraction",
        "0.2",
        "--out",
        s(&remote),
    ]);
    for f in ["clipcov/subset.csv", "clipcov/subset.parquet"] {
        assert_eq!(
            std::fs::read(local.join(f)).unwrap(),
            std::fs::read(remote.join(f)).unwrap(),
            "{f} differs between the local and the http:// run"
        );
    }
    let requests = std::fs::read_to_string(&log).unwrap();
    let ranged = |name: &str| {
        requests
            .lines()
            .any(|l| l.starts_with(&format!("GET /{name} range=bytes=")))
    };
    assert!(
        ranged("shard.parquet"),
        "no range read of the shard:\n{requests}"
    );
    assert!(
        ranged("prompts.parquet"),
        "no range read of the prompts:\n{requests}"
    );
    // A missing object: one line, exit 74, naming the URL.
    let o = clipcov(&[
        "select",
        "--data",
        &format!("{base}/nope.parquet"),
        "--prompts",
        &url_prompts,
        "--fraction",
        "0.2",
        "--out",
        s(&dir.join("x")),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("nope.parquet"), "{err}");
}
