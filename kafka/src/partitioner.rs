//! The one partitioner every fleetpipe producer uses, and the same choice
//! computed without a client.
//!
//! A vehicle's records must land in one partition (per-vehicle order, and
//! per-vehicle state owned by whoever consumes that partition), so every
//! producer of a topic has to map a key to the same partition. librdkafka's
//! default partitioner (`consistent_random`, CRC32 of the key) and the Java
//! client's (murmur2 of the key) disagree, so a topic written by both would
//! scatter a vehicle's records over two partitions. fleetpipe therefore sets
//! librdkafka's `murmur2_random` ([`PARTITIONER`]) on every producer it
//! creates ([`producer_config`]): for a non-empty key it is the Java
//! client's choice, so Kafka Streams or Java consumers that co-partition by
//! vehicle agree with fleetpipe. [`partition_for`] computes that choice
//! without a client (for routing, tests and tooling).

use std::collections::BTreeMap;

use rdkafka::ClientConfig;

/// The librdkafka partitioner fleetpipe's producers use: Java-compatible
/// murmur2 of the key (records without a key go to a random partition).
pub const PARTITIONER: &str = "murmur2_random";

/// librdkafka's name of the partitioner option.
const PARTITIONER_OPTION: &str = "partitioner";

/// Why a client configuration could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientConfigError {
    /// No bootstrap servers.
    #[error("kafka brokers: must list bootstrap servers (host:port,...)")]
    NoBrokers,
    /// A pass-through option would change what fleetpipe relies on.
    #[error(
        "librdkafka option {key:?} = {value:?}: fleetpipe sets it to {required:?} and it \
         cannot be overridden ({why})"
    )]
    Reserved {
        /// The option, e.g. `partitioner`.
        key: String,
        /// The value asked for.
        value: String,
        /// The value fleetpipe sets.
        required: &'static str,
        /// Why it is fixed.
        why: &'static str,
    },
}

/// Options of any librdkafka client (admin, consumer, producer): the
/// bootstrap servers, then the pass-through `options` (e.g.
/// `security.protocol`), which may not change the partitioner.
///
/// Producers take [`producer_config`] instead; consumers and admin clients
/// take this one, since librdkafka warns about a producer option
/// (`partitioner`) given to a consumer.
///
/// # Errors
///
/// [`ClientConfigError::NoBrokers`] for blank `brokers`,
/// [`ClientConfigError::Reserved`] when `options` set `partitioner` to
/// anything but [`PARTITIONER`].
pub fn client_config(
    brokers: &str,
    options: &BTreeMap<String, String>,
) -> Result<ClientConfig, ClientConfigError> {
    if brokers.trim().is_empty() {
        return Err(ClientConfigError::NoBrokers);
    }
    if let Some(value) = options.get(PARTITIONER_OPTION)
        && value != PARTITIONER
    {
        return Err(ClientConfigError::Reserved {
            key: PARTITIONER_OPTION.to_owned(),
            value: value.clone(),
            required: PARTITIONER,
            why: "every producer of a topic must map a vehicle to the same partition",
        });
    }
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers.trim());
    for (key, value) in options {
        config.set(key, value);
    }
    Ok(config)
}

/// Options of a producer: [`client_config`] plus `partitioner =`
/// [`PARTITIONER`], so that the record with key `k` of a topic with `n`
/// partitions lands in [`partition_for`]`(k, n)`, as with the Java client.
/// Every producer fleetpipe creates starts from this.
///
/// # Errors
///
/// As [`client_config`].
pub fn producer_config(
    brokers: &str,
    options: &BTreeMap<String, String>,
) -> Result<ClientConfig, ClientConfigError> {
    let mut config = client_config(brokers, options)?;
    config.set(PARTITIONER_OPTION, PARTITIONER);
    Ok(config)
}

/// The partition of a record with `key` in a topic of `partitions`
/// partitions, as the Java client's default partitioner and librdkafka's
/// [`PARTITIONER`] choose it: `toPositive(murmur2(key)) % partitions`.
/// `None` when `partitions` is not positive.
///
/// An empty key is hashed like any other (both clients do); only a record
/// without a key is placed at random.
pub fn partition_for(key: &[u8], partitions: i32) -> Option<i32> {
    if partitions < 1 {
        return None;
    }
    // Java's Utils.toPositive: clear the sign bit (not abs(), which would
    // map i32::MIN to itself).
    Some((murmur2(key) & 0x7fff_ffff) % partitions)
}

/// Kafka's murmur2 (MurmurHash2, 32-bit, seed `0x9747b28c`), bit for bit
/// Java's `org.apache.kafka.common.utils.Utils.murmur2`: little-endian
/// 4-byte blocks, the tail mixed in as Java's switch falls through.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    // Java's length is an int; a key of 4 GiB or more cannot be a Kafka
    // key, and truncating keeps this total.
    #[allow(clippy::cast_possible_truncation, reason = "see above")]
    let mut h = SEED ^ data.len() as u32;
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let mut k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        for (i, byte) in tail.iter().enumerate() {
            h ^= u32::from(*byte) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    // Java's int is the same 32 bits read as two's complement.
    i32::from_ne_bytes(h.to_ne_bytes())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    /// The vectors of Kafka's own test of `Utils.murmur2`:
    /// `UtilsTest.testMurmur2` in apache/kafka,
    /// clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java.
    #[test]
    fn murmur2_matches_kafka_utils_test() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (key, expected) in cases {
            assert_eq!(
                murmur2(key),
                expected,
                "murmur2({:?})",
                String::from_utf8_lossy(key)
            );
        }
    }

    /// Every tail length (0 to 3 bytes after the 4-byte blocks) and the
    /// empty key: the Java client's values librdkafka checks its own
    /// murmur2 against (`unittest_murmur2` in librdkafka's
    /// src/rdmurmur2.c), i.e. what the producer's `murmur2_random` computes.
    #[test]
    fn murmur2_matches_librdkafka_unit_test() {
        let unaligned = b"PreAmbleWillBeRemoved,ThePrePartThatIs";
        let cases: [(&[u8], u32); 11] = [
            (b"kafka", 0xd067_cf64),
            (b"giberish123456789", 0x8f55_2b0c),
            (b"1234", 0x9fc9_7b14),
            (b"234", 0xe7c0_09ca),
            (b"34", 0x8739_30da),
            (b"4", 0x5a4b_5ca1),
            (unaligned, 0x7842_4f1c),
            (&unaligned[1..], 0x4a62_b377),
            (&unaligned[2..], 0xe0e4_e09e),
            (&unaligned[3..], 0x62b8_b43f),
            (b"", 0x106e_08d9),
        ];
        for (key, expected) in cases {
            assert_eq!(
                murmur2(key),
                i32::from_ne_bytes(expected.to_ne_bytes()),
                "murmur2({:?})",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn partition_is_the_positive_hash_modulo_the_count() {
        // -973932308 & 0x7fffffff = 1173551340.
        assert_eq!(partition_for(b"21", 1), Some(0));
        assert_eq!(partition_for(b"21", 6), Some(1_173_551_340 % 6));
        assert_eq!(partition_for(b"21", 1_000), Some(340));
        // 479470107 is positive already.
        assert_eq!(partition_for(b"abc", 7), Some(479_470_107 % 7));
        for n in 1..64 {
            let p = partition_for(b"vehicle-42", n).unwrap();
            assert!((0..n).contains(&p), "{p} not in 0..{n}");
        }
    }

    #[test]
    fn no_partition_without_partitions() {
        assert_eq!(partition_for(b"abc", 0), None);
        assert_eq!(partition_for(b"abc", -3), None);
        assert_eq!(partition_for(b"", i32::MAX).map(|p| p >= 0), Some(true));
    }

    #[test]
    fn producers_use_murmur2_random() {
        let options = BTreeMap::from([("linger.ms".to_owned(), "5".to_owned())]);
        let config = producer_config(" 127.0.0.1:9092 ", &options).unwrap();
        assert_eq!(config.get("partitioner"), Some("murmur2_random"));
        assert_eq!(config.get("bootstrap.servers"), Some("127.0.0.1:9092"));
        assert_eq!(config.get("linger.ms"), Some("5"));
        // Other clients get no producer option.
        let config = client_config("127.0.0.1:9092", &options).unwrap();
        assert_eq!(config.get("partitioner"), None);
    }

    #[test]
    fn the_partitioner_cannot_be_changed() {
        let options = BTreeMap::from([("partitioner".to_owned(), "consistent_random".to_owned())]);
        let error = producer_config("127.0.0.1:9092", &options).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("\"partitioner\" = \"consistent_random\"")
                && message.contains("murmur2_random"),
            "{message}"
        );
        // Saying the same thing is fine.
        let options = BTreeMap::from([("partitioner".to_owned(), PARTITIONER.to_owned())]);
        assert!(producer_config("127.0.0.1:9092", &options).is_ok());
    }

    #[test]
    fn brokers_are_required() {
        assert!(matches!(
            client_config("  ", &BTreeMap::new()),
            Err(ClientConfigError::NoBrokers)
        ));
    }
}
