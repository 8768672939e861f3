//! Events as they travel: each is encoded once, when it is committed, and those bytes are what the
//! store keeps and what every stream sends, to one subscriber or to a thousand.
//!
//! [`SharedEvent`] is an event with its encoding. [`EncodedEventCodec`] is the codec of the two
//! streaming methods (`EventService.Subscribe`, `SessionService.Connect`): it writes the bytes as
//! they are, which is the same protobuf `Event` on the wire, so clients decode it as ever.

use crate::events::Event;
use bytes::{BufMut, Bytes};
use prost::Message;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::OnceLock;
use tonic::Status;
use tonic::codec::{Codec, EncodeBuf, Encoder};

/// A committed event as its protobuf encoding, made once: the store keeps [`SharedEvent::bytes`]
/// and the streams send [`SharedEvent::encoded`]. Its trace context is kept beside it, for the spans
/// of the streams that deliver it. Reads of the [`Event`] itself (through `Deref`) decode it the
/// first time: the writer that made it drops the decoded event as soon as it is encoded, so the
/// log's ring holds the bytes alone and a thousand small allocations do not wait there to be freed
/// by another thread. Read back from the store, it keeps the bytes as stored, fields this build
/// does not know included.
#[derive(Clone, Debug)]
pub struct SharedEvent {
    encoded: Bytes,
    traceparent: String,
    /// Boxed: an `Event` is over 800 bytes (its body is the largest of its kinds), which every
    /// entry of the log's ring would carry, mostly empty, and every commit would copy.
    decoded: OnceLock<Box<Event>>,
}

// What the boxing above is for: the ring keeps one of these per event.
const _: () = assert!(std::mem::size_of::<SharedEvent>() <= 128);

impl SharedEvent {
    pub fn new(mut event: Event) -> SharedEvent {
        let encoded = Bytes::from(event.encode_to_vec());
        SharedEvent {
            encoded,
            traceparent: std::mem::take(&mut event.traceparent),
            decoded: OnceLock::new(),
        }
    }

    /// An event read back from the store, which keeps its encoding.
    pub fn decode(encoded: Bytes) -> Result<SharedEvent, prost::DecodeError> {
        let event = Event::decode(encoded.clone())?;
        Ok(SharedEvent {
            encoded,
            traceparent: event.traceparent.clone(),
            decoded: OnceLock::from(Box::new(event)),
        })
    }

    /// The protobuf encoding, shared: cloning it copies no bytes.
    pub fn encoded(&self) -> EncodedEvent {
        EncodedEvent(self.encoded.clone())
    }

    /// The bytes the store keeps.
    pub fn bytes(&self) -> &[u8] {
        &self.encoded
    }

    /// The W3C trace context of the request that caused the event (empty if none).
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }
}

impl Deref for SharedEvent {
    type Target = Event;

    fn deref(&self) -> &Event {
        self.decoded.get_or_init(|| {
            Box::new(
                Event::decode(self.encoded.clone()).expect(
                    "an event decodes from its own encoding or from bytes checked when read",
                ),
            )
        })
    }
}

impl PartialEq for SharedEvent {
    /// Two events are the same when their encodings are.
    fn eq(&self, other: &SharedEvent) -> bool {
        self.encoded == other.encoded
    }
}

/// One `Event`, already encoded: what a stream's buffer holds and its transport sends.
#[derive(Clone, Debug, PartialEq)]
pub struct EncodedEvent(pub Bytes);

impl EncodedEvent {
    /// The event, decoded (tests and tools; the server never needs it).
    pub fn decode(&self) -> Result<Event, prost::DecodeError> {
        Event::decode(self.0.clone())
    }
}

/// The codec of a method that streams [`EncodedEvent`]s: their bytes go out as they are; the
/// request `U` is decoded as any protobuf message.
#[derive(Debug)]
pub struct EncodedEventCodec<U>(PhantomData<U>);

impl<U> Default for EncodedEventCodec<U> {
    fn default() -> Self {
        EncodedEventCodec(PhantomData)
    }
}

impl<U: Message + Default + Send + 'static> Codec for EncodedEventCodec<U> {
    type Encode = EncodedEvent;
    type Decode = U;
    type Encoder = EncodedEventEncoder;
    type Decoder = tonic_prost::ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        EncodedEventEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

/// Writes an [`EncodedEvent`]'s bytes into the frame.
#[derive(Debug, Default)]
pub struct EncodedEventEncoder;

impl Encoder for EncodedEventEncoder {
    type Item = EncodedEvent;
    type Error = Status;

    fn encode(&mut self, item: EncodedEvent, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item.0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::event::Body;

    fn stopped() -> Event {
        Event {
            sequence: 7,
            event_id: "e-7".into(),
            tenant: "t1".into(),
            correlation_id: "r-1".into(),
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            body: Some(Body::ProcessingStopped(Default::default())),
            ..Event::default()
        }
    }

    #[test]
    fn a_new_event_keeps_its_encoding_and_trace_context_and_reads_back_whole() {
        let event = stopped();
        let shared = SharedEvent::new(event.clone());
        assert_eq!(shared.bytes(), event.encode_to_vec().as_slice());
        assert_eq!(shared.traceparent(), event.traceparent);
        assert_eq!(*shared, event, "decoded on first read");
        assert_eq!(shared.clone().encoded().0, shared.encoded().0);
    }

    #[test]
    fn an_event_read_from_the_store_is_the_event_that_was_stored() {
        let event = stopped();
        let read = SharedEvent::decode(Bytes::from(event.encode_to_vec())).unwrap();
        assert_eq!(read.traceparent(), event.traceparent);
        assert_eq!(*read, event);
        assert_eq!(read, SharedEvent::new(event));
        assert!(SharedEvent::decode(Bytes::from_static(&[0xff, 0xff])).is_err());
    }
}
