//! The gRPC codec: prost's, with small starting buffers.
//!
//! tonic starts each call's encode buffer at 8 KiB, and a server stream
//! keeps it for its whole life: most of what an idle `SubscribeMessages`
//! stream cost (BENCHMARKS.md, "Where an idle stream's bytes live"). An
//! event is a few hundred bytes; the buffer grows when one is larger, and a
//! busy stream still hands h2 up to `YIELD_THRESHOLD` bytes at a time.

use std::marker::PhantomData;
use tonic::codec::BufferSettings;
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Where each call's encode and decode buffers start.
const BUFFER_SIZE: usize = 512;
/// tonic's default: a busy stream's events go to h2 in writes up to this.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// prost's encoding with [`BUFFER_SIZE`] buffers; named by `build.rs` as
/// the codec of every generated service and client.
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD))
    }
}
