//! A bounded buffer that keeps the last N bytes of a stream: what a step's failure message and
//! a fix prompt show, without ever holding a whole step's output.

use std::collections::VecDeque;

/// The last `capacity` bytes written.
#[derive(Debug, Clone)]
pub struct Tail {
    bytes: VecDeque<u8>,
    capacity: usize,
}

impl Tail {
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            bytes: VecDeque::with_capacity(capacity.min(8 << 10)),
            capacity,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        let keep = &chunk[chunk.len().saturating_sub(self.capacity)..];
        let overflow = (self.bytes.len() + keep.len()).saturating_sub(self.capacity);
        self.bytes.drain(..overflow);
        self.bytes.extend(keep);
    }

    #[must_use]
    pub fn into_vec(self) -> Vec<u8> {
        self.bytes.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_last_bytes_whatever_the_chunking() {
        let mut tail = Tail::new(5);
        for chunk in [&b"abc"[..], b"", b"defg", b"hijklmnop", b"q"] {
            tail.push(chunk);
        }
        assert_eq!(tail.into_vec(), b"mnopq");
        let mut small = Tail::new(5);
        small.push(b"ab");
        assert_eq!(small.into_vec(), b"ab");
    }
}
