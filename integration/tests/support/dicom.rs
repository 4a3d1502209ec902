//! dcmtk peers and DICOM helpers shared by the DICOM suites: the tools run
//! to completion with a deadline, dcmtk SCPs standing in for devices, a
//! test image, and hand-built upper-layer PDUs for raw-socket tests.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{wait_for, Workspace};

/// A child process that is killed when the test ends, pass or fail, so no
/// dcmtk process outlives the test (or keeps a port busy).
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a dcmtk tool to completion within the support deadline. Output goes
/// to `<log>.log` in the workspace, not into pipes, so a chatty tool can never
/// block on a full pipe while we poll it.
pub fn run_tool(ws: &Workspace, log: &str, program: &str, args: &[&str]) -> (ExitStatus, String) {
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

/// A dcmtk SCP listening on 127.0.0.1 (and, since dcmtk 3.6.7 has no option
/// to bind one address, on every interface; tests only reach it through
/// 127.0.0.1), logging to a file in the workspace.
pub struct Scp {
    _child: Killed,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Scp {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Starts `program` on a free port and waits until it listens. dcmtk SCPs
/// take a port number only, so the port is found by binding port 0 and
/// releasing it; another process may grab it in between, in which case the
/// SCP exits and another port is tried. `args(port)` gives its arguments
/// (and may write a config file naming the port).
pub fn start_scp(
    ws: &Workspace,
    log: &str,
    program: &str,
    mut args: impl FnMut(u16) -> Vec<String>,
) -> Scp {
    let log = ws.path(&format!("{log}.log"));
    for _ in 0..5 {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let out = File::create(&log).unwrap();
        let child = Command::new(program)
            .args(args(port))
            .current_dir(ws.dir.path())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {program}: {e}"));
        let mut child = Killed(child);
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        // A bare connect that closes again is harmless: the SCP logs a
        // failed association and keeps listening.
        let up = wait_for(&format!("{program} to listen"), || {
            if child.0.try_wait().unwrap().is_some() {
                return Some(false);
            }
            TcpStream::connect(addr).ok().map(|_| true)
        });
        if up {
            return Scp {
                _child: child,
                addr,
                log,
            };
        }
    }
    panic!(
        "{program} did not start: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// A plaintext dcmtk storage SCP writing what it receives into `out_dir`.
pub struct StoreScp {
    scp: Scp,
    pub addr: SocketAddr,
    pub out_dir: PathBuf,
}

impl StoreScp {
    pub fn log(&self) -> String {
        self.scp.log()
    }

    /// The files storescp has written so far.
    pub fn received(&self) -> Vec<PathBuf> {
        received(&self.out_dir)
    }

    /// storescp stored exactly one file, byte for byte the data set `sent`.
    pub fn assert_stored_only(&self, sent: &Path) {
        let files = self.received();
        assert_eq!(files.len(), 1, "storescp stored {files:?}: {}", self.log());
        assert!(
            std::fs::read(&files[0]).unwrap() == std::fs::read(sent).unwrap(),
            "{} differs from the data set sent ({})",
            files[0].display(),
            sent.display()
        );
    }
}

/// Starts `storescp` on a free port, storing into `received/`.
pub fn start_storescp(ws: &Workspace) -> StoreScp {
    start_storescp_named(ws, "received", &[])
}

/// Starts `storescp` on a free port, storing into `dir` (in the workspace,
/// also the name of its log) with `extra` arguments (`-aet`, `-v`).
pub fn start_storescp_named(ws: &Workspace, dir: &str, extra: &[&str]) -> StoreScp {
    let out_dir = ws.path(dir);
    std::fs::create_dir_all(&out_dir).unwrap();
    let log = if dir == "received" { "storescp" } else { dir };
    let scp = start_scp(ws, log, "storescp", |port| {
        // +xe: prefer explicit VR little endian, the syntax we send.
        // +B -F: write the data set exactly as it came off the wire and
        // nothing else: no re-encoding, and no file meta header (which the
        // receiver makes up itself, see `make_dataset`).
        let mut args: Vec<String> = ["+xe", "+B", "-F"].map(String::from).to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push("-od".into());
        args.push(out_dir.to_str().unwrap().into());
        args.push(port.to_string());
        args
    });
    StoreScp {
        addr: scp.addr,
        scp,
        out_dir,
    }
}

/// The files in `dir`.
pub fn received(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

/// The test image's SOP Instance UID and Study Instance UID.
pub const SC_SOP_INSTANCE_UID: &str = "2.25.271828182845904523536028747135266249";
pub const SC_STUDY_UID: &str = "2.25.271828182845904523536028747135266250";

/// A small Secondary Capture image: 4x4 pixels, 8 bit, monochrome. The UIDs
/// are fixed `2.25.<integer>` UIDs (PS3.5 B.2), which need no registered root.
pub const SC_DUMP: &str = r"
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
pub fn make_dataset(ws: &Workspace) -> PathBuf {
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

// ---------------------------------------------------------------------------
// Upper-layer PDUs by hand (PS3.8 9.3), for raw-socket tests.

pub const VERIFICATION: &str = "1.2.840.10008.1.1";
pub const SECONDARY_CAPTURE: &str = "1.2.840.10008.5.1.4.1.1.7";
pub const STUDY_ROOT_FIND: &str = "1.2.840.10008.5.1.4.1.2.2.1";
pub const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
pub const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const APPLICATION_CONTEXT: &str = "1.2.840.10008.3.1.1.1";
const IMPLEMENTATION_CLASS: &str = "2.25.1234567890";

pub const A_ASSOCIATE_RQ: u8 = 0x01;
pub const A_ASSOCIATE_AC: u8 = 0x02;
pub const A_ASSOCIATE_RJ: u8 = 0x03;
pub const P_DATA_TF: u8 = 0x04;
pub const A_RELEASE_RQ: u8 = 0x05;
pub const A_RELEASE_RP: u8 = 0x06;
pub const A_ABORT: u8 = 0x07;

/// A PDU: type, reserved byte, 32-bit big-endian length, body.
pub fn pdu(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind, 0];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A variable item: type, reserved byte, 16-bit big-endian length, body.
fn item(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind, 0];
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn ae(title: &str) -> [u8; 16] {
    let mut out = [b' '; 16];
    out[..title.len()].copy_from_slice(title.as_bytes());
    out
}

/// An A-ASSOCIATE-RQ from `calling` to `called` proposing each
/// `(context id, abstract syntax)` with implicit and explicit VR little
/// endian, announcing `max_pdu` as the largest PDU it receives.
pub fn associate_rq(calling: &str, called: &str, contexts: &[(u8, &str)], max_pdu: u32) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&1u16.to_be_bytes()); // protocol version
    body.extend_from_slice(&[0, 0]);
    body.extend_from_slice(&ae(called));
    body.extend_from_slice(&ae(calling));
    body.extend_from_slice(&[0; 32]);
    body.extend(item(0x10, APPLICATION_CONTEXT.as_bytes()));
    for (id, syntax) in contexts {
        let mut pc = vec![*id, 0, 0, 0];
        pc.extend(item(0x30, syntax.as_bytes()));
        pc.extend(item(0x40, IMPLICIT_LE.as_bytes()));
        pc.extend(item(0x40, EXPLICIT_LE.as_bytes()));
        body.extend(item(0x20, &pc));
    }
    let mut user = item(0x51, &max_pdu.to_be_bytes());
    user.extend(item(0x52, IMPLEMENTATION_CLASS.as_bytes()));
    body.extend(item(0x50, &user));
    pdu(A_ASSOCIATE_RQ, &body)
}

/// A P-DATA-TF with one PDV of `data` on context `id` (a last command
/// fragment, as a C-ECHO-RQ would be).
pub fn p_data(id: u8, data: &[u8]) -> Vec<u8> {
    let mut pdv = ((data.len() + 2) as u32).to_be_bytes().to_vec();
    pdv.push(id);
    pdv.push(0x03);
    pdv.extend_from_slice(data);
    pdu(P_DATA_TF, &pdv)
}

pub fn release_rq() -> Vec<u8> {
    pdu(A_RELEASE_RQ, &[0; 4])
}

/// The presentation contexts an A-ASSOCIATE-AC body accepted (result 0).
pub fn accepted_contexts(ac_body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 68; // version, reserved, two AE titles, 32 reserved
    while at + 4 <= ac_body.len() {
        let kind = ac_body[at];
        let len = u16::from_be_bytes([ac_body[at + 2], ac_body[at + 3]]) as usize;
        let item = &ac_body[at + 4..(at + 4 + len).min(ac_body.len())];
        if kind == 0x21 && item.len() >= 3 && item[2] == 0 {
            out.push(item[0]);
        }
        at += 4 + len;
    }
    out
}

/// What the peer did next, as a client reading one PDU saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// A whole PDU: type and body.
    Pdu(u8, Vec<u8>),
    /// Closed (or reset) before a whole PDU came.
    Closed,
}

/// Reads one PDU, or the close, within `within`. Panics if neither comes:
/// the peer would be waiting for more, which is never what a test expects.
pub fn read_pdu_within(s: &mut TcpStream, within: Duration) -> Answer {
    let start = Instant::now();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if buf.len() >= 6 {
            let len = u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]) as usize;
            if buf.len() >= 6 + len {
                return Answer::Pdu(buf[0], buf[6..6 + len].to_vec());
            }
        }
        let left = within
            .checked_sub(start.elapsed())
            .unwrap_or_else(|| panic!("no PDU and no close within {within:?}; got {buf:02x?}"));
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match s.read(&mut chunk) {
            Ok(0) => return Answer::Closed,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("no PDU and no close within {within:?}; got {buf:02x?}")
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Answer::Closed,
        }
    }
}

/// Reads one PDU within the support deadline.
pub fn read_pdu(s: &mut TcpStream) -> Answer {
    read_pdu_within(s, super::DEADLINE)
}

/// After an A-ABORT (or straight away), the peer closes within the deadline.
pub fn closes_within(s: &mut TcpStream, within: Duration) -> bool {
    let start = Instant::now();
    let mut chunk = [0u8; 4096];
    loop {
        let Some(left) = within.checked_sub(start.elapsed()) else {
            return false;
        };
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match s.read(&mut chunk) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}
