//! Stream framing of `stream.proto`: a 4-byte big-endian length (at most [`MAX_FRAME_LEN`])
//! followed by that many bytes of protobuf. Used for the StreamHeader / StreamAck exchange that
//! opens every stdio stream connection; after it the connection carries raw bytes.

use protobuf::Message;
use std::io::{Read, Write};

/// Largest frame body accepted or sent.
pub const MAX_FRAME_LEN: usize = 4096;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The transport failed (includes EOF before a whole frame arrived).
    #[error("stream transport")]
    Io(#[from] std::io::Error),
    /// The length prefix exceeds [`MAX_FRAME_LEN`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    TooLong(usize),
    /// The body is not a valid protobuf message of the expected type.
    #[error("frame body does not decode")]
    Decode(#[from] protobuf::Error),
}

fn encode<M: Message>(msg: &M) -> Result<Vec<u8>, FrameError> {
    let body = msg.write_to_bytes()?;
    if body.len() > MAX_FRAME_LEN {
        return Err(FrameError::TooLong(body.len()));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

fn body_len(prefix: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLong(len));
    }
    Ok(len)
}

/// Writes one frame holding `msg`.
pub fn write_frame<M: Message, W: Write>(w: &mut W, msg: &M) -> Result<(), FrameError> {
    w.write_all(&encode(msg)?)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame and decodes it as `M`. Reads exactly the frame, nothing of what follows.
pub fn read_frame<M: Message, R: Read>(r: &mut R) -> Result<M, FrameError> {
    let mut prefix = [0u8; 4];
    r.read_exact(&mut prefix)?;
    let mut body = vec![0u8; body_len(prefix)?];
    r.read_exact(&mut body)?;
    Ok(M::parse_from_bytes(&body)?)
}

/// Decodes a frame held entirely in `bytes` (the fuzzing and test entry point).
pub fn decode_frame<M: Message>(bytes: &[u8]) -> Result<M, FrameError> {
    read_frame(&mut std::io::Cursor::new(bytes))
}

/// Async (tokio) variants of the frame functions.
pub mod tokio_io {
    use super::{body_len, encode, FrameError};
    use protobuf::Message;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    /// Writes one frame holding `msg`.
    pub async fn write_frame<M: Message, W: AsyncWrite + Unpin>(
        w: &mut W,
        msg: &M,
    ) -> Result<(), FrameError> {
        w.write_all(&encode(msg)?).await?;
        w.flush().await?;
        Ok(())
    }

    /// Reads one frame and decodes it as `M`.
    pub async fn read_frame<M: Message, R: AsyncRead + Unpin>(r: &mut R) -> Result<M, FrameError> {
        let mut prefix = [0u8; 4];
        r.read_exact(&mut prefix).await?;
        let mut body = vec![0u8; body_len(prefix)?];
        r.read_exact(&mut body).await?;
        Ok(M::parse_from_bytes(&body)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{StreamAck, StreamHeader, StreamKind};

    #[test]
    fn round_trip_leaves_following_bytes() {
        let h = StreamHeader {
            container_id: "c1".into(),
            exec_id: "e".into(),
            kind: StreamKind::STDERR.into(),
            ..Default::default()
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &h).unwrap();
        buf.extend_from_slice(b"raw");
        let mut cur = std::io::Cursor::new(buf);
        let back: StreamHeader = read_frame(&mut cur).unwrap();
        assert_eq!(back, h);
        let mut rest = Vec::new();
        cur.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"raw");
    }

    #[test]
    fn refuses_oversized_and_truncated() {
        let mut big = (MAX_FRAME_LEN as u32 + 1).to_be_bytes().to_vec();
        big.extend_from_slice(&[0; 8]);
        assert!(matches!(
            decode_frame::<StreamAck>(&big),
            Err(FrameError::TooLong(_))
        ));
        assert!(matches!(
            decode_frame::<StreamAck>(&[0, 0, 0, 5, 1]),
            Err(FrameError::Io(_))
        ));
        let garbage = [0, 0, 0, 2, 0xff, 0xff];
        assert!(matches!(
            decode_frame::<StreamAck>(&garbage),
            Err(FrameError::Decode(_))
        ));
    }

    #[tokio::test]
    async fn async_round_trip() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let ack = StreamAck {
            ok: false,
            error: "no such process".into(),
            ..Default::default()
        };
        tokio_io::write_frame(&mut a, &ack).await.unwrap();
        let back: StreamAck = tokio_io::read_frame(&mut b).await.unwrap();
        assert_eq!(back, ack);
    }
}
