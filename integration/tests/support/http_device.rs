//! A plaintext keep-alive HTTP/1.1 device to stand upstream of moat: one
//! thread per connection, each request read in full (head and body) before
//! the test's handler runs, and every answer a `200` with a text body.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// One request as the device received it.
#[derive(Debug)]
pub struct ParsedRequest {
    pub method: String,
    pub path: String,
    /// In arrival order; names lowercased, values trimmed.
    pub headers: Vec<(String, String)>,
    /// Body bytes received (Content-Length, or the chunks' sizes summed).
    pub body_len: usize,
    /// The client sent `Connection: close`.
    pub close: bool,
}

impl ParsedRequest {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A running device on a loopback port.
pub struct HttpDevice {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl HttpDevice {
    /// TCP connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Starts a device on a free loopback port. `handler` runs once per
/// request, on that connection's thread, and returns the answer's body.
/// The connection stays open until the client closes it or asks to.
pub fn serve(handler: impl Fn(&ParsedRequest) -> String + Send + Sync + 'static) -> HttpDevice {
    serve_with(handler, usize::MAX)
}

/// Like `serve`, but hangs up after one answer without saying so first,
/// like a legacy web server whose keep-alive timeout is shorter than the
/// gateway's.
pub fn serve_one_per_connection(
    handler: impl Fn(&ParsedRequest) -> String + Send + Sync + 'static,
) -> HttpDevice {
    serve_with(handler, 1)
}

fn serve_with(
    handler: impl Fn(&ParsedRequest) -> String + Send + Sync + 'static,
    requests_per_connection: usize,
) -> HttpDevice {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let handler = Arc::new(handler);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            let handler = handler.clone();
            std::thread::spawn(move || {
                let _ = serve_connection(stream, &*handler, requests_per_connection);
            });
        }
    });
    HttpDevice { addr, accepted }
}

fn serve_connection(
    stream: TcpStream,
    handler: &dyn Fn(&ParsedRequest) -> String,
    requests_per_connection: usize,
) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    let mut answered = 0;
    while let Some(req) = read_request(&mut reader)? {
        let body = handler(&req);
        write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{body}",
            body.len(),
            if req.close {
                "Connection: close\r\n"
            } else {
                ""
            }
        )?;
        out.flush()?;
        answered += 1;
        if req.close || answered == requests_per_connection {
            break;
        }
    }
    Ok(())
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Reads one request (head and body); `None` when the peer closed cleanly
/// between requests.
pub fn read_request(r: &mut impl BufRead) -> io::Result<Option<ParsedRequest>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(path), Some(_version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid("request line"));
    };
    let mut req = ParsedRequest {
        method: method.to_string(),
        path: path.to_string(),
        headers: Vec::new(),
        body_len: 0,
        close: false,
    };
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(invalid("truncated head"));
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        let (name, value) = l.split_once(':').ok_or_else(|| invalid("header"))?;
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_string());
        req.close |= name == "connection" && value.eq_ignore_ascii_case("close");
        req.headers.push((name, value));
    }
    if req
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size, 16).map_err(|_| invalid("chunk size"))?;
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    line.clear();
                    if r.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                        break;
                    }
                }
                break;
            }
            // The chunk and its CRLF.
            let mut chunk = vec![0u8; size + 2];
            r.read_exact(&mut chunk)?;
            req.body_len += size;
        }
    } else if let Some(len) = req.header("content-length") {
        let len: usize = len.parse().map_err(|_| invalid("content-length"))?;
        let mut body = vec![0u8; len];
        r.read_exact(&mut body)?;
        req.body_len = len;
    }
    Ok(Some(req))
}
