//! TLS on the listen port (`--tls-cert`, `--tls-key`): `wss://` and `https://` served by rustls
//! on each core's monoio runtime, in front of the same HTTP and WebSocket code as plain TCP.
//!
//! Why a module of its own: the certificate outlives any one connection and can change under
//! them. Every handshake asks [`Certs`] for the current certificate, and SIGHUP ([`Tls::reload`])
//! swaps in the one read from the files again; a handshake already done keeps the key it agreed
//! on, so open connections never notice. A reload that fails (a missing file, a key that does
//! not match) logs why and keeps the certificate in use.
//!
//! Before the handshake the first byte is peeked: a TLS record starts with 0x16, while a client
//! speaking plain HTTP to this port gets a plain `400` saying to use `https://` or `wss://`
//! instead of a handshake error it cannot read. ALPN offers `http/1.1` only; TLS 1.2 and 1.3.

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Split};
use monoio::net::TcpStream;
use monoio::BufResult;
use monoio_rustls::{ServerTlsStream, TlsAcceptor};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The first byte of a TLS handshake record (ContentType `handshake`).
const HANDSHAKE_RECORD: u8 = 0x16;

/// Most plaintext one TLS write takes from a batch of frames: one full TLS record.
const RECORD: usize = 16 * 1024;

const PLAIN_HTTP_BODY: &[u8] = b"this port speaks TLS: use https:// or wss://\n";

/// The server's TLS setup: the acceptor every core uses and the files to reload from.
pub struct Tls {
    acceptor: TlsAcceptor,
    certs: Arc<Certs>,
    provider: Arc<CryptoProvider>,
    cert_path: PathBuf,
    key_path: PathBuf,
}

/// The certificate handed to new handshakes; replaced whole by a reload.
#[derive(Debug)]
struct Certs(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Certs {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

impl Tls {
    /// Reads the PEM files and builds the server configuration; the error says which file is
    /// wrong and how.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Tls, String> {
        // ring: no C toolchain step of its own. rustls 0.23.48 deprecates it for lacking the
        // post-quantum key exchange (X25519MLKEM768); clients then agree on X25519. aws-lc-rs
        // has it, at the price of building aws-lc (the `aws_lc_rs` feature and provider here).
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = certified_key(cert_path, key_path, &provider)?;
        let certs = Arc::new(Certs(RwLock::new(Arc::new(key))));
        let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(certs.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            certs,
            provider,
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
        })
    }

    /// Reads the files again (SIGHUP): new handshakes get the new certificate, open
    /// connections keep theirs. On error the current certificate stays.
    pub fn reload(&self) -> Result<(), String> {
        let key = certified_key(&self.cert_path, &self.key_path, &self.provider)?;
        *self.certs.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        Ok(())
    }

    /// Takes a new connection through the TLS handshake. `None` when it is not TLS (a plain
    /// HTTP request is answered 400 first) or the handshake fails; the caller bounds the time.
    pub async fn accept(&self, mut stream: TcpStream) -> Option<TlsConn> {
        match first_byte(&stream).await {
            Some(HANDSHAKE_RECORD) => {}
            Some(b) if b.is_ascii_alphabetic() => {
                refuse_plain_http(&mut stream).await;
                return None;
            }
            _ => return None,
        }
        match self.acceptor.accept(stream).await {
            Ok(tls) => Some(TlsConn(tls)),
            Err(e) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                None
            }
        }
    }
}

/// The certificate chain and its key from PEM files, checked to belong together.
fn certified_key(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, String> {
    let cert_err = |e: &dyn std::fmt::Display| format!("--tls-cert {}: {e}", cert_path.display());
    let key_err = |e: &dyn std::fmt::Display| format!("--tls-key {}: {e}", key_path.display());
    // Read first, so that a missing or unreadable file says so rather than "no certificate".
    let cert_pem = std::fs::read(cert_path).map_err(|e| cert_err(&e))?;
    let key_pem = std::fs::read(key_path).map_err(|e| key_err(&e))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(&e))?;
    if chain.is_empty() {
        return Err(cert_err(&"no PEM certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| key_err(&e))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        key_err(&format_args!(
            "{e} (is it the key of the certificate in {}?)",
            cert_path.display()
        ))
    })
}

/// The first byte the client sent, left unread; `None` if it closed first.
async fn first_byte(stream: &TcpStream) -> Option<u8> {
    let fd = stream.as_raw_fd();
    loop {
        stream.readable(false).await.ok()?;
        let mut b = 0u8;
        // SAFETY: one byte into a local; MSG_PEEK leaves it for the handshake.
        let n = unsafe {
            libc::recv(
                fd,
                (&mut b as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        match n {
            1 => return Some(b),
            0 => return None,
            _ => {
                let e = std::io::Error::last_os_error();
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) {
                    return None;
                }
            }
        }
    }
}

/// Answers a plain HTTP request on the TLS port with a 400 that says why, and closes. The
/// request is read first: closing with it unread would reset the connection, and the client
/// could lose the answer.
async fn refuse_plain_http(stream: &mut TcpStream) {
    let _ = stream.read(Vec::with_capacity(4096)).await;
    let resp = chat_wire::handshake::http_response(400, "text/plain", PLAIN_HTTP_BODY);
    if stream.write_all(resp).await.0.is_ok() {
        let _ = stream.shutdown().await;
        // Let the client read the answer and close first (bounded by the caller's deadline too).
        let _ = monoio::time::timeout(Duration::from_secs(1), stream.read(vec![0; 4096])).await;
    }
}

/// A connection after its handshake. Reads pass through; `writev` gathers the iovecs into one
/// TLS record (monoio-rustls 0.4 would write only the first iovec, one record and one syscall
/// per frame).
pub struct TlsConn(ServerTlsStream<TcpStream>);

// SAFETY: the inner stream is `Split` (monoio-rustls keeps separate read and write buffers over
// a `Split` TcpStream); the wrapper adds no state shared between the halves.
unsafe impl Split for TlsConn {}

impl AsyncReadRent for TlsConn {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        self.0.read(buf).await
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        self.0.readv(buf).await
    }
}

impl AsyncWriteRent for TlsConn {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        self.0.write(buf).await
    }

    async fn writev<T: IoVecBuf>(&mut self, bufs: T) -> BufResult<usize, T> {
        let gathered = gather(&bufs, RECORD);
        let (res, _) = self.0.write(gathered).await;
        (res, bufs)
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush().await
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        self.0.shutdown().await
    }
}

/// Copies the start of `bufs`, up to `max` bytes, into one buffer.
fn gather<T: IoVecBuf>(bufs: &T, max: usize) -> Vec<u8> {
    // SAFETY: `IoVecBuf` promises `read_iovec_len` valid iovecs at `read_iovec_ptr`, each
    // pointing at `iov_len` readable bytes, for as long as `bufs` is borrowed.
    let iovecs =
        unsafe { std::slice::from_raw_parts(bufs.read_iovec_ptr(), bufs.read_iovec_len()) };
    let total: usize = iovecs.iter().map(|v| v.iov_len).sum();
    let mut out = Vec::with_capacity(total.min(max));
    for v in iovecs {
        let take = v.iov_len.min(max - out.len());
        // SAFETY: as above; `take <= iov_len`.
        out.extend_from_slice(unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, take) });
        if out.len() == max {
            break;
        }
    }
    out
}
