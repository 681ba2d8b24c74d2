//! `google.protobuf.Timestamp` with the proto3 canonical JSON form:
//! RFC 3339 in UTC with a `Z` and 0, 3, 6 or 9 fractional digits, exactly as
//! grpcurl and other protobuf JSON printers write it.

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
    /// The canonical JSON text.
    pub fn to_rfc3339(self) -> String {
        let days = self.seconds.div_euclid(86_400);
        let of_day = self.seconds.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        let (hour, minute, second) = (of_day / 3600, of_day % 3600 / 60, of_day % 60);
        let nanos = self.nanos.clamp(0, 999_999_999);
        let fraction = match nanos {
            0 => String::new(),
            n if n % 1_000_000 == 0 => format!(".{:03}", n / 1_000_000),
            n if n % 1_000 == 0 => format!(".{:06}", n / 1_000),
            n => format!(".{n:09}"),
        };
        format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{fraction}Z")
    }

    /// Parses RFC 3339 (`Z` or a numeric offset).
    pub fn parse_rfc3339(text: &str) -> Option<Self> {
        let number = |range: std::ops::Range<usize>| text.get(range)?.parse::<i64>().ok();
        let bytes = text.as_bytes();
        if bytes.len() < 20
            || bytes[4] != b'-'
            || bytes[7] != b'-'
            || !matches!(bytes[10], b'T' | b't')
        {
            return None;
        }
        let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
        let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
        if !(1..=12).contains(&month)
            || !(1..=31).contains(&day)
            || hour > 23
            || minute > 59
            || second > 60
        {
            return None;
        }
        let mut rest = &text[19..];
        let mut nanos = 0i64;
        if let Some(fraction) = rest.strip_prefix('.') {
            let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 || digits > 9 {
                return None;
            }
            nanos = fraction[..digits].parse::<i64>().ok()? * 10i64.pow(9 - digits as u32);
            rest = &fraction[digits..];
        }
        let offset = match rest {
            "Z" | "z" => 0,
            _ => {
                let sign = match rest.as_bytes().first()? {
                    b'+' => 1,
                    b'-' => -1,
                    _ => return None,
                };
                let (h, m) = (
                    rest.get(1..3)?.parse::<i64>().ok()?,
                    rest.get(4..6)?.parse::<i64>().ok()?,
                );
                if rest.len() != 6 || rest.as_bytes()[3] != b':' {
                    return None;
                }
                sign * (h * 3600 + m * 60)
            }
        };
        let seconds =
            days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
                - offset;
        Some(Self {
            seconds,
            nanos: nanos as i32,
        })
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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
