mod support;

// DICOM through the gateway with the real dcmtk tools: a TLS-capable
// workstation (`echoscu`, `storescu`) talks to a plaintext storage SCP
// (`storescp`) standing in for a legacy modality or PACS behind moat.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use serde_json::Value;
use support::{require, wait_for, Moat, Workspace};

/// A child process that is killed when the test ends, pass or fail, so no
/// dcmtk process outlives the test (or keeps a port busy).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a dcmtk tool to completion within the support deadline. Output goes
/// to `<log>.log` in the workspace, not into pipes, so a chatty tool can never
/// block on a full pipe while we poll it.
fn run_tool(ws: &Workspace, log: &str, program: &str, args: &[&str]) -> (ExitStatus, String) {
    let path = ws.path(&format!("{log}.log"));
    let out = File::create(&path).unwrap();
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null()) // never wait for a key password prompt
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {program}: {e}"));
    let mut child = Killed(child);
    let status = wait_for(&format!("{program} to finish"), || {
        child.0.try_wait().unwrap()
    });
    (status, std::fs::read_to_string(&path).unwrap_or_default())
}

/// A plaintext dcmtk storage SCP. dcmtk 3.6.7 has no option to bind one
/// address, so it listens on every interface; the test only ever reaches it
/// through 127.0.0.1.
struct StoreScp {
    _child: Killed,
    addr: SocketAddr,
    out_dir: PathBuf,
    log: PathBuf,
}

impl StoreScp {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Starts `storescp` on a free port. storescp takes only a port number, so
/// the port is found by binding port 0 and releasing it; another process may
/// grab it in between, in which case storescp exits and we try again.
fn start_storescp(ws: &Workspace) -> StoreScp {
    let out_dir = ws.path("received");
    std::fs::create_dir_all(&out_dir).unwrap();
    let log = ws.path("storescp.log");
    for _ in 0..5 {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let out = File::create(&log).unwrap();
        let child = Command::new("storescp")
            // +xe: prefer explicit VR little endian, the syntax we send.
            // +B -F: write the data set exactly as it came off the wire and
            // nothing else: no re-encoding, and no file meta header (which
            // the receiver makes up itself, see `make_dataset`).
            .args(["+xe", "+B", "-F", "-od"])
            .arg(&out_dir)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawning storescp");
        let mut child = Killed(child);
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        // A bare connect that closes again is harmless: storescp logs a
        // failed association and keeps listening.
        let up = wait_for("storescp to listen", || {
            if child.0.try_wait().unwrap().is_some() {
                return Some(false);
            }
            TcpStream::connect(addr).ok().map(|_| true)
        });
        if up {
            return StoreScp {
                _child: child,
                addr,
                out_dir,
                log,
            };
        }
    }
    panic!(
        "storescp did not start: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// A small Secondary Capture image: 4x4 pixels, 8 bit, monochrome. The UIDs
/// are fixed `2.25.<integer>` UIDs (PS3.5 B.2), which need no registered root.
const SC_DUMP: &str = r"
(0008,0016) UI =SecondaryCaptureImageStorage
(0008,0018) UI [2.25.271828182845904523536028747135266249]
(0008,0020) DA [20240101]
(0008,0030) TM [120000]
(0008,0050) SH [MOAT0001]
(0008,0060) CS [OT]
(0008,0064) CS [WSD]
(0008,0090) PN [Referring^Doctor]
(0010,0010) PN [Test^Patient]
(0010,0020) LO [MOAT-IT-1]
(0010,0030) DA [19700101]
(0010,0040) CS [O]
(0020,000d) UI [2.25.271828182845904523536028747135266250]
(0020,000e) UI [2.25.271828182845904523536028747135266251]
(0020,0010) SH [1]
(0020,0011) IS [1]
(0020,0013) IS [1]
(0020,0020) CS [L\F]
(0028,0002) US 1
(0028,0004) CS [MONOCHROME2]
(0028,0010) US 4
(0028,0011) US 4
(0028,0100) US 8
(0028,0101) US 8
(0028,0102) US 7
(0028,0103) US 0
(7fe0,0010) OB 00\11\22\33\44\55\66\77\88\99\aa\bb\cc\dd\ee\ff
";

/// Writes the test image as a bare data set in explicit VR little endian.
///
/// Why not a Part 10 file with a meta header: the meta header never crosses
/// the network (PS3.10 7.1). The receiver writes its own, with its own
/// ImplementationVersionName and the caller's AE title, so a whole Part 10
/// file can never come out byte-identical. The data set is exactly what
/// travels through moat, so sending and storing only the data set lets us
/// compare whole files byte for byte.
fn make_dataset(ws: &Workspace) -> PathBuf {
    let dump = ws.write("sc.dump", SC_DUMP);
    let dataset = ws.path("sc.ds");
    let (status, log) = run_tool(
        ws,
        "dump2dcm",
        "dump2dcm",
        &[
            "-F",
            "+te",
            dump.to_str().unwrap(),
            dataset.to_str().unwrap(),
        ],
    );
    assert!(status.success(), "dump2dcm failed: {log}");
    dataset
}

/// The files storescp has written so far.
fn received(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

fn closed_events(moat: &Moat, n: usize) -> Vec<Value> {
    wait_for(&format!("{n} connection_closed events"), || {
        let closed = moat.events("connection_closed");
        (closed.len() >= n).then_some(closed)
    })
}

#[test]
fn dicom_echo_and_store_over_tls() {
    for tool in ["echoscu", "storescu", "storescp", "dump2dcm"] {
        require(tool);
    }
    let ws = Workspace::new();
    let scp = start_storescp(&ws);

    let body = format!(
        r#"[[device]]
id = "pacs"
name = "Storage SCP (dcmtk storescp)"

  [[device.service]]
  name = "dicom"
  protocol = "tcp"
  listen = "127.0.0.1:0"
  upstream = "{}"
  allow = ["127.0.0.1"]
{}"#,
        scp.addr,
        ws.tls_table()
    );
    let moat = Moat::start(&ws, &body, &["dicom"]);
    let port = moat.addr("dicom").port().to_string();
    // +tla: TLS without a client certificate (the service asks for none);
    // dcmtk still verifies the gateway's certificate, against the dev CA.
    let tls = ["+tla", "+cf", ws.certs.ca.to_str().unwrap()];

    // C-ECHO over TLS.
    let mut args = tls.to_vec();
    args.extend(["127.0.0.1", &port]);
    let (status, log) = run_tool(&ws, "echoscu-tls", "echoscu", &args);
    assert!(
        status.success(),
        "echoscu over TLS failed: {log}\nmoat: {}\nstorescp: {}",
        moat.stderr(),
        scp.log()
    );
    closed_events(&moat, 1);

    // C-STORE over TLS. `-f` because the input is a bare data set; `-xe`
    // proposes explicit VR little endian first, the data set's own syntax,
    // so storescu sends it without conversion.
    let dataset = make_dataset(&ws);
    let mut args = tls.to_vec();
    args.extend(["-f", "-xe", "127.0.0.1", &port, dataset.to_str().unwrap()]);
    let (status, log) = run_tool(&ws, "storescu-tls", "storescu", &args);
    assert!(
        status.success(),
        "storescu over TLS failed: {log}\nmoat: {}\nstorescp: {}",
        moat.stderr(),
        scp.log()
    );
    let files = received(&scp.out_dir);
    assert_eq!(files.len(), 1, "storescp stored {files:?}: {}", scp.log());
    assert!(
        std::fs::read(&files[0]).unwrap() == std::fs::read(&dataset).unwrap(),
        "{} differs from the data set sent ({})",
        files[0].display(),
        dataset.display()
    );

    // One allowed and one closed event per association, both over TLS and
    // both carrying traffic in each direction.
    let closed = closed_events(&moat, 2);
    assert_eq!(
        closed.len(),
        2,
        "one connection per association: {closed:#?}"
    );
    let allowed = moat.events("connection_allowed");
    assert_eq!(allowed.len(), 2, "{allowed:#?}");
    for c in &closed {
        let a = allowed
            .iter()
            .find(|a| a["conn_id"] == c["conn_id"])
            .unwrap_or_else(|| panic!("no connection_allowed for {c}"));
        let version = a["tls"]["version"].as_str().unwrap_or_default();
        assert!(version.starts_with("TLSv1."), "not TLS: {a}");
        assert_eq!(a["upstream"], scp.addr.to_string().as_str(), "{a}");
        assert!(c["bytes_from_client"].as_u64().unwrap() > 0, "{c}");
        assert!(c["bytes_to_client"].as_u64().unwrap() > 0, "{c}");
    }

    // A plaintext association to the TLS port: the A-ASSOCIATE-RQ is not a
    // TLS ClientHello, so moat refuses it during the handshake.
    let (status, log) = run_tool(&ws, "echoscu-plain", "echoscu", &["127.0.0.1", &port]);
    assert!(!status.success(), "plaintext echoscu succeeded: {log}");
    let denied = moat.wait_event("connection_denied", |e| {
        e["reason"] == "tls_handshake_failed"
    });
    assert!(denied.get("tls").is_none(), "{denied}");
    assert_eq!(
        moat.events("connection_allowed").len(),
        2,
        "plaintext was let through"
    );
}
