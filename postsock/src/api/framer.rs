//! Framers: parsing and serialisation in the stack (Post Sockets §4.4). A [`Framer`] turns
//! application objects into bytes and back; a [`Framed`] carrier hands the application
//! parsed objects instead of byte messages.
//!
//! Each `send` becomes one message. On receive, the bytes of each message (or of each part,
//! with partial delivery) are fed to the framer, which may find several objects in one
//! message, or one object across several parts of a long message (a byte stream carried
//! as one never-ending message). An object may not straddle two messages.
//!
//! Shipped framers: [`LengthPrefix`] (4-byte big-endian length, then the bytes: the usual
//! framing of a byte stream), [`Lines`] (UTF-8 lines ended by `\n`) and [`Json`] (one serde
//! value per line).

use std::collections::VecDeque;
use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::{Carrier, Error, Event, Message, MessageProperties, Result, SendHandle};
use crate::{ConfigError, Violation};

/// Typed framing and deframing.
pub trait Framer: Send {
    /// What the application sends and receives.
    type Item;
    /// Appends the encoding of `item` to `out`.
    fn frame(&mut self, item: &Self::Item, out: &mut BytesMut) -> Result<()>;
    /// Takes one complete item from the front of `buf`, if there is one; an error means the
    /// bytes can never form an item.
    fn deframe(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Item>>;
}

/// A 4-byte big-endian length, then that many bytes.
#[derive(Debug, Clone)]
pub struct LengthPrefix {
    max: usize,
}

impl LengthPrefix {
    /// Frames of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        LengthPrefix { max }
    }
}

impl Framer for LengthPrefix {
    type Item = Bytes;
    fn frame(&mut self, item: &Bytes, out: &mut BytesMut) -> Result<()> {
        if item.len() > self.max || item.len() > u32::MAX as usize {
            return Err(Error::MessageTooLarge {
                size: item.len(),
                max: self.max,
            });
        }
        out.put_u32(item.len() as u32);
        out.extend_from_slice(item);
        Ok(())
    }
    fn deframe(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len > self.max {
            return Err(Violation::PrefixTooLarge { len, max: self.max }.into());
        }
        if buf.len() < 4 + len {
            return Ok(None);
        }
        buf.advance(4);
        Ok(Some(buf.split_to(len).freeze()))
    }
}

/// UTF-8 text lines ended by `\n` (a `\r` before it is dropped).
#[derive(Debug, Clone)]
pub struct Lines {
    max: usize,
}

impl Lines {
    /// Lines of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        Lines { max }
    }
}

impl Framer for Lines {
    type Item = String;
    fn frame(&mut self, item: &String, out: &mut BytesMut) -> Result<()> {
        if item.contains('\n') {
            return Err(ConfigError::NewlineInLine.into());
        }
        if item.len() > self.max {
            return Err(Error::MessageTooLarge {
                size: item.len(),
                max: self.max,
            });
        }
        out.extend_from_slice(item.as_bytes());
        out.put_u8(b'\n');
        Ok(())
    }
    fn deframe(&mut self, buf: &mut BytesMut) -> Result<Option<String>> {
        let Some(end) = buf.iter().position(|&b| b == b'\n') else {
            if buf.len() > self.max {
                return Err(Violation::LineTooLong { max: self.max }.into());
            }
            return Ok(None);
        };
        let mut line = buf.split_to(end + 1);
        line.truncate(end);
        if line.last() == Some(&b'\r') {
            line.truncate(end - 1);
        }
        String::from_utf8(line.to_vec())
            .map(Some)
            .map_err(|e| Error::from(Violation::NotUtf8(e.to_string())))
    }
}

/// One serde value per line, as JSON (newline-delimited JSON).
#[derive(Debug)]
pub struct Json<T> {
    lines: Lines,
    _item: PhantomData<fn() -> T>,
}

impl<T> Json<T> {
    /// Values whose JSON text is at most `max` bytes.
    pub fn new(max: usize) -> Self {
        Json {
            lines: Lines::new(max),
            _item: PhantomData,
        }
    }
}

impl<T> Framer for Json<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    type Item = T;
    fn frame(&mut self, item: &T, out: &mut BytesMut) -> Result<()> {
        // serde_json never writes a raw newline: newlines inside strings are escaped.
        let text = serde_json::to_string(item).map_err(|e| ConfigError::Json(e.to_string()))?;
        self.lines.frame(&text, out)
    }
    fn deframe(&mut self, buf: &mut BytesMut) -> Result<Option<T>> {
        match self.lines.deframe(buf)? {
            Some(line) => serde_json::from_str(&line)
                .map(Some)
                .map_err(|e| Error::from(Violation::BadJson(e.to_string()))),
            None => Ok(None),
        }
    }
}

/// A carrier that sends and receives framed objects.
#[derive(Debug)]
pub struct Framed<F: Framer> {
    carrier: Carrier,
    framer: std::sync::Mutex<F>,
    inbound: tokio::sync::Mutex<Inbound<F::Item>>,
}

#[derive(Debug)]
struct Inbound<T> {
    buf: BytesMut,
    ready: VecDeque<T>,
}

impl<F: Framer> Framed<F> {
    /// Wraps `carrier`.
    pub fn new(carrier: Carrier, framer: F) -> Self {
        Framed {
            carrier,
            framer: std::sync::Mutex::new(framer),
            inbound: tokio::sync::Mutex::new(Inbound {
                buf: BytesMut::new(),
                ready: VecDeque::new(),
            }),
        }
    }

    /// The carrier underneath.
    pub fn carrier(&self) -> &Carrier {
        &self.carrier
    }

    /// Unwraps the carrier (for example to switch framers). Bytes received but not yet
    /// parsed are dropped.
    pub fn into_carrier(self) -> Carrier {
        self.carrier
    }

    /// Sends `item` as one message with default properties.
    pub async fn send(&self, item: &F::Item) -> Result<SendHandle> {
        self.send_with(item, MessageProperties::default()).await
    }

    /// Sends `item` as one message with `properties`.
    pub async fn send_with(
        &self,
        item: &F::Item,
        properties: MessageProperties,
    ) -> Result<SendHandle> {
        let mut out = BytesMut::new();
        self.framer
            .lock()
            .map_err(|_| ConfigError::FramerPoisoned)?
            .frame(item, &mut out)?;
        self.carrier
            .send(Message {
                data: out.freeze(),
                properties,
            })
            .await
    }

    /// The next object from the peer; `Ok(None)` once the peer closed. Bytes that cannot
    /// form an object, or a message that ends inside one, are an error.
    pub async fn receive(&self) -> Result<Option<F::Item>> {
        let mut inbound = self.inbound.lock().await;
        loop {
            if let Some(item) = inbound.ready.pop_front() {
                return Ok(Some(item));
            }
            let (data, end) = match self.carrier.next_event().await {
                None | Some(Event::Closed) => return Ok(None),
                Some(Event::Received(m)) => (m.data, true),
                Some(Event::ReceivedPartial(p)) => (p.data, p.end),
                Some(Event::ReceiveError { error, .. }) | Some(Event::ConnectionError(error)) => {
                    inbound.buf.clear();
                    return Err(error);
                }
                Some(_) => continue,
            };
            inbound.buf.extend_from_slice(&data);
            let mut framer = self
                .framer
                .lock()
                .map_err(|_| ConfigError::FramerPoisoned)?;
            loop {
                let Inbound { buf, ready } = &mut *inbound;
                match framer.deframe(buf) {
                    Ok(Some(item)) => ready.push_back(item),
                    Ok(None) => break,
                    Err(e) => {
                        buf.clear();
                        return Err(e);
                    }
                }
            }
            if end && !inbound.buf.is_empty() {
                let left = inbound.buf.len();
                inbound.buf.clear();
                return Err(Violation::LeftOver { left }.into());
            }
        }
    }

    /// Closes the carrier gracefully.
    pub async fn close(&self) -> Result<()> {
        self.carrier.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<F: Framer>(mut f: F, items: &[F::Item]) -> Vec<F::Item> {
        let mut buf = BytesMut::new();
        for item in items {
            f.frame(item, &mut buf).expect("frame");
        }
        let mut out = Vec::new();
        // Feed one byte at a time: frames split anywhere must still come out whole.
        let mut feed = BytesMut::new();
        for b in buf.iter() {
            feed.put_u8(*b);
            while let Some(item) = f.deframe(&mut feed).expect("deframe") {
                out.push(item);
            }
        }
        assert!(feed.is_empty());
        out
    }

    #[test]
    fn framers_round_trip_across_arbitrary_splits() {
        let items = vec![
            Bytes::from_static(b"a"),
            Bytes::new(),
            Bytes::from(vec![9u8; 300]),
        ];
        assert_eq!(round_trip(LengthPrefix::new(1000), &items), items);
        let lines = vec!["hello".to_string(), String::new(), "wörld".to_string()];
        assert_eq!(round_trip(Lines::new(100), &lines), lines);
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        struct Point {
            x: i32,
            label: String,
        }
        let points = vec![
            Point {
                x: 1,
                label: "one\nline".into(),
            },
            Point {
                x: -2,
                label: String::new(),
            },
        ];
        assert_eq!(round_trip(Json::<Point>::new(100), &points), points);
    }

    #[test]
    fn framers_reject_bad_input() {
        let mut f = LengthPrefix::new(10);
        let mut buf = BytesMut::from(&[0, 0, 0, 11][..]);
        assert!(f.deframe(&mut buf).is_err());
        let mut l = Lines::new(4);
        let mut buf = BytesMut::from(&b"toolong"[..]);
        assert!(l.deframe(&mut buf).is_err());
        let mut buf = BytesMut::from(&[0xff, b'\n'][..]);
        assert!(Lines::new(10).deframe(&mut buf).is_err());
        let mut j = Json::<u32>::new(10);
        let mut buf = BytesMut::from(&b"\"x\"\n"[..]);
        assert!(j.deframe(&mut buf).is_err());
    }
}
