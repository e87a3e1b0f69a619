//! An object's NDJSON compressed for storing, the same bytes every time for the same lines.

use std::io::Write as _;

use crate::config::Compression;
use crate::object::Ndjson;

/// What the compressor is handed at a time. zlib-rs's output at some levels (1 and 6 among
/// them) depends on where its input was cut, and an object's chunks are cut where its lines
/// arrived, which differs when the object is written again after a restart.
const PIECE_BYTES: usize = 64 * 1024;

pub(super) fn compress(ndjson: &Ndjson, compression: Compression, level: u32) -> Vec<u8> {
    // Writing into a Vec cannot fail.
    match compression {
        Compression::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(
                Vec::with_capacity(ndjson.len() / 4),
                flate2::Compression::new(level),
            );
            let _ = in_pieces(ndjson, |piece| encoder.write_all(piece));
            encoder.finish().unwrap_or_default()
        }
        Compression::Zstd => {
            let level = i32::try_from(level).unwrap_or(3);
            let compressed =
                zstd::stream::write::Encoder::new(Vec::new(), level).and_then(|mut encoder| {
                    // The frame states its size, as a one-shot compression's does.
                    encoder.set_pledged_src_size(u64::try_from(ndjson.len()).ok())?;
                    in_pieces(ndjson, |piece| encoder.write_all(piece))?;
                    encoder.finish()
                });
            compressed.unwrap_or_default()
        }
    }
}

/// Calls `write` with the text in pieces of [`PIECE_BYTES`] (the last one shorter), whatever
/// its chunks: a piece within one chunk is passed as it is, one across chunks is put together.
fn in_pieces(
    ndjson: &Ndjson,
    mut write: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut across = Vec::new();
    for mut chunk in ndjson.chunks() {
        if !across.is_empty() {
            let taken = (PIECE_BYTES - across.len()).min(chunk.len());
            across.extend_from_slice(&chunk[..taken]);
            chunk = &chunk[taken..];
            if across.len() < PIECE_BYTES {
                continue;
            }
            write(&across)?;
            across.clear();
        }
        let whole = chunk.len() - chunk.len() % PIECE_BYTES;
        for piece in chunk[..whole].chunks(PIECE_BYTES) {
            write(piece)?;
        }
        across.extend_from_slice(&chunk[whole..]);
    }
    if !across.is_empty() {
        write(&across)?;
    }
    Ok(())
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

    /// Lines of different lengths and content, each with its newline.
    fn varied_lines(count: usize) -> Vec<Vec<u8>> {
        (0..count)
            .map(|index| {
                let detail = "x".repeat(index * 7919 % 300);
                format!("{{\"id\":\"m-{index}\",\"offset\":{index},\"detail\":\"{detail}\"}}\n")
                    .into_bytes()
            })
            .collect()
    }

    /// The lines as runs of `sizes` lines each (cycled), every run handed over whole.
    fn adopted_in_runs(lines: &[Vec<u8>], sizes: &[usize]) -> Ndjson {
        let mut ndjson = Ndjson::default();
        let mut rest = lines;
        for size in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (run, after) = rest.split_at((*size).min(rest.len()));
            ndjson.adopt_text(run.concat());
            rest = after;
        }
        ndjson
    }

    #[test]
    fn the_same_lines_cut_into_other_chunks_compress_to_the_same_bytes() {
        // An object written again after a restart gets its lines in other batches.
        let lines = varied_lines(20_000);
        let mut copied = Ndjson::default();
        for line in &lines {
            copied.push_text(line);
        }
        let cuts = [
            adopted_in_runs(&lines, &[1024]),
            adopted_in_runs(&lines, &[1, 333, 7, 2000]),
        ];
        for (compression, level) in [
            (Compression::Gzip, 1),
            (Compression::Gzip, 2),
            (Compression::Gzip, 6),
            (Compression::Zstd, 3),
        ] {
            let expected = compress(&copied, compression, level);
            for cut in &cuts {
                assert_eq!(cut.to_vec(), copied.to_vec());
                assert!(
                    compress(cut, compression, level) == expected,
                    "{compression:?} level {level}"
                );
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn pieces_are_the_text_cut_at_fixed_sizes(
            runs in proptest::collection::vec(0..200_000_usize, 0..12),
        ) {
            let mut ndjson = Ndjson::default();
            let mut expected = Vec::new();
            for (index, len) in runs.into_iter().enumerate() {
                let run: Vec<u8> = (0..len).map(|at| (at + index) as u8).collect();
                expected.extend_from_slice(&run);
                ndjson.adopt_text(run);
            }
            let mut pieces = Vec::new();
            in_pieces(&ndjson, |piece| {
                pieces.push(piece.to_vec());
                Ok(())
            })
            .unwrap();
            proptest::prop_assert_eq!(pieces.concat(), expected);
            if let Some((last, whole)) = pieces.split_last() {
                proptest::prop_assert!(whole.iter().all(|piece| piece.len() == PIECE_BYTES));
                proptest::prop_assert!(!last.is_empty() && last.len() <= PIECE_BYTES);
            }
        }
    }
}
