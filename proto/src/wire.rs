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
use tonic::Status;
use tonic::codec::{Codec, EncodeBuf, Encoder};

/// A committed event and its protobuf encoding, made once. Reads see the [`Event`] (through
/// `Deref`); the store keeps [`SharedEvent::bytes`] and the streams send [`SharedEvent::encoded`].
/// Read back from the store, it keeps the bytes as stored, fields this build does not know included.
#[derive(Clone, Debug, PartialEq)]
pub struct SharedEvent {
    event: Event,
    encoded: Bytes,
}

impl SharedEvent {
    pub fn new(event: Event) -> SharedEvent {
        let encoded = Bytes::from(event.encode_to_vec());
        SharedEvent { event, encoded }
    }

    /// An event read back from the store, which keeps its encoding.
    pub fn decode(encoded: Bytes) -> Result<SharedEvent, prost::DecodeError> {
        let event = Event::decode(encoded.clone())?;
        Ok(SharedEvent { event, encoded })
    }

    /// The protobuf encoding, shared: cloning it copies no bytes.
    pub fn encoded(&self) -> EncodedEvent {
        EncodedEvent(self.encoded.clone())
    }

    /// The bytes the store keeps.
    pub fn bytes(&self) -> &[u8] {
        &self.encoded
    }
}

impl Deref for SharedEvent {
    type Target = Event;

    fn deref(&self) -> &Event {
        &self.event
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
