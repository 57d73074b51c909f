//! A socket that tells HTTP/2 it has no vectored writes, so that requests are batched.
//!
//! The h2 crate sends a DATA frame of more than 256 bytes on its own write when the socket
//! supports vectored writes, instead of copying it into the shared write buffer (the limit is
//! 1,024 bytes otherwise). An ext_authz request shaped like Envoy's is about 500 bytes, so with
//! 64 calls in flight the client made one system call per request instead of one per batch,
//! and over TCP the client, not the sidecar, became what the envoy scenario measured. Envoy
//! itself writes a whole event-loop iteration at once; this makes the tool do the same for
//! messages up to 1 KiB. Reads and writes are passed through unchanged.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Wraps a stream; only `is_write_vectored` differs (false, tokio's default).
pub struct BatchedWrites<T>(pub T);

impl<T: AsyncRead + Unpin> AsyncRead for BatchedWrites<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for BatchedWrites<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
