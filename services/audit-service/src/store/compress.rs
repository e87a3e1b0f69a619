//! An object's NDJSON compressed for storing, the same bytes every time for the same lines.

use std::io::Write as _;

use crate::config::Compression;
use crate::object::Ndjson;

pub(super) fn compress(ndjson: &Ndjson, compression: Compression, level: u32) -> Vec<u8> {
    // Writing into a Vec cannot fail.
    match compression {
        Compression::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(
                Vec::with_capacity(ndjson.len() / 4),
                flate2::Compression::new(level),
            );
            for chunk in ndjson.chunks() {
                let _ = encoder.write_all(chunk);
            }
            encoder.finish().unwrap_or_default()
        }
        Compression::Zstd => {
            let level = i32::try_from(level).unwrap_or(3);
            let compressed =
                zstd::stream::write::Encoder::new(Vec::new(), level).and_then(|mut encoder| {
                    // The frame states its size, as a one-shot compression's does.
                    encoder.set_pledged_src_size(u64::try_from(ndjson.len()).ok())?;
                    for chunk in ndjson.chunks() {
                        encoder.write_all(chunk)?;
                    }
                    encoder.finish()
                });
            compressed.unwrap_or_default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(count: usize) -> Ndjson {
        let mut ndjson = Ndjson::default();
        for index in 0..count {
            ndjson.push_line(format!("{{\"id\":\"m-{index}\",\"offset\":{index}}}").as_bytes());
        }
        ndjson
    }

    #[test]
    fn an_object_compresses_to_what_its_readers_decompress() {
        let object = lines(200_000);
        let ndjson = object.to_vec();
        let gzip = compress(&object, Compression::Gzip, 2);
        let mut text = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(gzip.as_slice()),
            &mut text,
        )
        .expect("gzip");
        assert_eq!(text, ndjson);
        let zstd = compress(&object, Compression::Zstd, 3);
        assert_eq!(
            zstd::stream::decode_all(zstd.as_slice()).expect("zstd"),
            ndjson
        );
        assert_eq!(
            zstd::bulk::decompress(&zstd, ndjson.len()).expect("a frame with its size"),
            ndjson
        );
    }

    #[test]
    fn the_same_lines_compress_to_the_same_bytes() {
        // A rewritten object (after a crash) must be the same object.
        for compression in [Compression::Gzip, Compression::Zstd] {
            assert_eq!(
                compress(&lines(50_000), compression, 3),
                compress(&lines(50_000), compression, 3)
            );
        }
    }
}
