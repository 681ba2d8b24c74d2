//! `google.protobuf.Timestamp` with the proto3 canonical JSON form:
//! RFC 3339 in UTC with a `Z` and 0, 3, 6 or 9 fractional digits, exactly as
//! grpcurl and other protobuf JSON printers write it. Formatting and parsing
//! are prost-types' (its `Display` and `FromStr`); this type exists only
//! because the generated serde code needs a type of ours to implement on.

use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error as _};

/// A point in time: seconds and nanoseconds since the Unix epoch.
#[derive(Clone, Copy, PartialEq, Eq, Hash, ::prost::Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl Timestamp {
    /// The canonical JSON text, as prost-types prints it.
    pub fn to_rfc3339(self) -> String {
        prost_types::Timestamp::from(self).to_string()
    }

    /// Parses RFC 3339 (`Z` or a numeric offset), as prost-types does.
    pub fn parse_rfc3339(text: &str) -> Option<Self> {
        text.parse::<prost_types::Timestamp>().ok().map(Self::from)
    }
}

/// The generated code needs a type of ours to carry serde; the calendar
/// arithmetic is prost-types'.
impl From<Timestamp> for prost_types::Timestamp {
    fn from(Timestamp { seconds, nanos }: Timestamp) -> Self {
        Self { seconds, nanos }
    }
}

impl From<prost_types::Timestamp> for Timestamp {
    fn from(prost_types::Timestamp { seconds, nanos }: prost_types::Timestamp) -> Self {
        Self { seconds, nanos }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse_rfc3339(&text).ok_or_else(|| D::Error::custom("not an RFC 3339 timestamp"))
    }
}

#[cfg(test)]
mod tests {
    use super::Timestamp;

    #[test]
    fn timestamps_print_in_the_canonical_form() {
        let at = |seconds, nanos| Timestamp { seconds, nanos }.to_rfc3339();
        assert_eq!(at(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(
            at(1_795_739_261, 206_835_000),
            "2026-11-27T00:27:41.206835Z"
        );
        assert_eq!(at(951_782_400, 5_000_000), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(-1, 1), "1969-12-31T23:59:59.000000001Z");
    }

    #[test]
    fn timestamps_parse_back_with_any_offset() {
        for (seconds, nanos) in [
            (0, 0),
            (1_795_739_261, 206_835_000),
            (951_782_400, 5_000_000),
        ] {
            let stamp = Timestamp { seconds, nanos };
            assert_eq!(Timestamp::parse_rfc3339(&stamp.to_rfc3339()), Some(stamp));
        }
        let offset = Timestamp::parse_rfc3339("2026-11-27T02:27:41+02:00").unwrap();
        assert_eq!(offset.seconds, 1_795_739_261);
        assert_eq!(Timestamp::parse_rfc3339("yesterday"), None);
        assert_eq!(Timestamp::parse_rfc3339("2026-13-01T00:00:00Z"), None);
    }
}
