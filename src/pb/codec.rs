//! The gRPC codec: prost's, with small starting buffers.
//!
//! tonic starts each call's encode buffer at 8 KiB, and a server stream
//! keeps it for its whole life: most of what an idle `SubscribeMessages`
//! stream cost (BENCHMARKS.md, "Where an idle stream's bytes live"). Ours
//! starts empty: an idle stream holds no buffer at all, the first event
//! allocates one of its own size, and once h2 has written what was handed
//! to it the same allocation is reused. A busy stream still hands h2 up to
//! `YIELD_THRESHOLD` bytes at a time. No compression is compiled in: tonic
//! grows a compressed message's buffer in `buffer_size` steps, so turning
//! compression on needs a non-zero encode buffer here.

use std::marker::PhantomData;
use tonic::codec::BufferSettings;
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Where each call's encode buffer starts: empty (see the module's note).
const ENCODE_BUFFER: usize = 0;
/// Where each call's decode buffer starts: a request is read once, and is
/// gone when the call is answered or its stream opened.
const DECODE_BUFFER: usize = 512;
/// tonic's default: a busy stream's events go to h2 in writes up to this.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// prost's encoding with [`ENCODE_BUFFER`] and [`DECODE_BUFFER`] buffers;
/// named by `build.rs` as the codec of every generated service and client.
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
        ProstEncoder::new(BufferSettings::new(ENCODE_BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::new(DECODE_BUFFER, YIELD_THRESHOLD))
    }
}
