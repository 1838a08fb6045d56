//! Request bodies of plain-HTTP requests, carried from the client to the origin server by the
//! proxy's own reading of their framing: exactly `Content-Length` bytes, or chunks re-encoded in
//! one canonical form. Whatever the client sends past the body is never forwarded, so the origin
//! server sees one request, the one the proxy checked.

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::http::Body;

/// The longest chunk-size line (size, extensions) or trailer line accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// The most trailer bytes accepted after the last chunk (they are read, then dropped).
const MAX_TRAILERS: usize = 16 * 1024;

/// Why a body could not be carried.
#[derive(Debug, thiserror::Error)]
pub(super) enum BodyError {
    #[error("the client closed the connection in the middle of the request body")]
    Truncated,
    #[error("malformed chunked body: {0}")]
    Malformed(&'static str),
    #[error("relaying the request body failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Copies the body framed as `body` from `client` to `upstream`, leaving anything after it
/// unread in `client`.
pub(super) async fn forward<R, W>(
    body: Body,
    client: &mut R,
    upstream: &mut W,
) -> Result<(), BodyError>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match body {
        Body::None => Ok(()),
        Body::Length(n) => copy_exact(client, upstream, n).await,
        Body::Chunked => forward_chunked(client, upstream).await,
    }
}

async fn copy_exact<R, W>(client: &mut R, upstream: &mut W, n: u64) -> Result<(), BodyError>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let copied = tokio::io::copy_buf(&mut client.take(n), upstream).await?;
    if copied < n {
        return Err(BodyError::Truncated);
    }
    Ok(())
}

async fn forward_chunked<R, W>(client: &mut R, upstream: &mut W) -> Result<(), BodyError>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let line = read_line(client, MAX_CHUNK_LINE).await?;
        let size = chunk_size(&line)?;
        if size == 0 {
            break;
        }
        upstream
            .write_all(format!("{size:x}\r\n").as_bytes())
            .await?;
        copy_exact(client, upstream, size).await?;
        if !read_line(client, 2).await?.is_empty() {
            return Err(BodyError::Malformed("chunk data longer than its size"));
        }
        upstream.write_all(b"\r\n").await?;
    }
    // Trailer fields are dropped: they could carry framing or routing headers past the checks.
    let mut trailers = 0;
    loop {
        let line = read_line(client, MAX_CHUNK_LINE).await?;
        if line.is_empty() {
            break;
        }
        trailers += line.len() + 2;
        if trailers > MAX_TRAILERS {
            return Err(BodyError::Malformed("trailer section too large"));
        }
    }
    upstream.write_all(b"0\r\n\r\n").await?;
    upstream.flush().await?;
    Ok(())
}

/// `1a;name=value` → 26. Extensions are read and dropped.
fn chunk_size(line: &[u8]) -> Result<u64, BodyError> {
    let end = line.iter().position(|&b| b == b';').unwrap_or(line.len());
    let (digits, extensions) = line.split_at(end);
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(BodyError::Malformed(
            "a chunk size that is not a hexadecimal number",
        ));
    }
    if !extensions
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
    {
        return Err(BodyError::Malformed(
            "control characters in a chunk extension",
        ));
    }
    // At most 15 hex digits: always fits.
    std::str::from_utf8(digits)
        .ok()
        .and_then(|d| u64::from_str_radix(d, 16).ok())
        .ok_or(BodyError::Malformed(
            "a chunk size that is not a hexadecimal number",
        ))
}

/// One line ending in CRLF (a bare LF is refused: servers disagree about it), without the CRLF.
async fn read_line<R: AsyncBufRead + Unpin>(
    client: &mut R,
    max: usize,
) -> Result<Vec<u8>, BodyError> {
    let mut line = Vec::new();
    loop {
        let available = client.fill_buf().await?;
        if available.is_empty() {
            return Err(BodyError::Truncated);
        }
        let (used, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        line.extend_from_slice(&available[..used]);
        client.consume(used);
        if line.len() > max + 2 {
            return Err(BodyError::Malformed("a chunk line too long"));
        }
        if done {
            return match line.strip_suffix(b"\r\n") {
                Some(content) if !content.contains(&b'\r') => Ok(content.to_vec()),
                _ => Err(BodyError::Malformed("a line not ending in CRLF")),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn carry(body: Body, input: &[u8]) -> (Result<(), BodyError>, Vec<u8>, Vec<u8>) {
        let mut client = tokio::io::BufReader::new(input);
        let mut out = Vec::new();
        let result = forward(body, &mut client, &mut out).await;
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        (result, out, rest)
    }

    #[tokio::test]
    async fn a_length_body_is_copied_and_what_follows_is_left() {
        let (result, out, rest) = carry(
            Body::Length(4),
            b"bodyGET http://other.test/ HTTP/1.1\r\n\r\n",
        )
        .await;
        result.unwrap();
        assert_eq!(out, b"body");
        assert_eq!(rest, b"GET http://other.test/ HTTP/1.1\r\n\r\n");
        let (result, _, _) = carry(Body::Length(10), b"short").await;
        assert!(matches!(result, Err(BodyError::Truncated)));
    }

    #[tokio::test]
    async fn chunks_are_re_encoded_and_trailers_dropped() {
        let (result, out, rest) = carry(
            Body::Chunked,
            b"4;ext=1\r\nWiki\r\n05\r\npedia\r\n0\r\nX-Trailer: host\r\n\r\nNEXT",
        )
        .await;
        result.unwrap();
        assert_eq!(out, b"4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n");
        assert_eq!(rest, b"NEXT");
    }

    #[tokio::test]
    async fn ambiguous_chunks_are_refused() {
        for bad in [
            &b"4\nWiki\r\n0\r\n\r\n"[..],
            b"4\r\nWikipedia\r\n0\r\n\r\n",
            b"-4\r\nWiki\r\n0\r\n\r\n",
            b"0x4\r\nWiki\r\n0\r\n\r\n",
            b"4 \r\nWiki\r\n0\r\n\r\n",
            b"ffffffffffffffff\r\n",
            b"4;a=\x01\r\nWiki\r\n0\r\n\r\n",
            b"4\r\nWi\rki\r\n0\r\n\r\n",
        ] {
            let (result, _, _) = carry(Body::Chunked, bad).await;
            assert!(result.is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let long = format!("{}\r\n", "0".repeat(5000));
        assert!(carry(Body::Chunked, long.as_bytes()).await.0.is_err());
    }
}
