//! The one grammar of `--sizes` (`sweep`, `noise --compare`): a list of image sizes written as
//! single sizes and square ranges, so both commands accept the same text.
//!
//! Each size goes through [`parse_size`], so a list can hold nothing a single `--size` would
//! refuse; duplicates are dropped (the first stays), and the list is bounded by the caller's
//! maximum before any range is expanded.

use super::parse_size;

/// The grammar, for the commands' help.
pub const SIZES_HELP: &str = "\
Sizes (--sizes): comma-separated items, each N (NxN), WxH, or A..B[/STEP] (squares from A to B,
both included, every STEP pixels; STEP defaults to 64): --sizes 384..1024/64,
--sizes 512,576,832x640, --sizes 512,576..640/32. Every side must be a multiple of 8;
a size listed twice is kept once.";

/// Parse a `--sizes` list (see [`SIZES_HELP`]) of at most `max` sizes, in the order given.
/// Errors quote the item at fault, without the flag's name.
pub fn parse_sizes(text: &str, max: usize) -> Result<Vec<(u32, u32)>, String> {
    fn push(size: (u32, u32), out: &mut Vec<(u32, u32)>) {
        if !out.contains(&size) {
            out.push(size);
        }
    }
    let mut out: Vec<(u32, u32)> = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if let Some((from, rest)) = item.split_once("..") {
            let (to, step) = rest.split_once('/').unwrap_or((rest, "64"));
            let num = |s: &str| {
                s.trim().parse::<u32>().map_err(|_| {
                    format!("'{item}': '{s}' is not a number (a range is A..B or A..B/STEP)")
                })
            };
            let (from, to, step) = (num(from)?, num(to)?, num(step)?);
            if step == 0 || from > to {
                return Err(format!("'{item}': a range needs A <= B and STEP >= 1"));
            }
            let n = ((to - from) / step) as usize + 1;
            if out.len() + n > max {
                return Err(format!("'{text}': more than {max} sizes"));
            }
            for i in 0..n as u32 {
                let side = from + i * step;
                push(parse_size(&format!("{side}x{side}"))?, &mut out);
            }
        } else {
            let size = if item.contains(['x', 'X']) {
                parse_size(item)?
            } else {
                // Quote the item as written, not as the WxH it stands for.
                parse_size(&format!("{item}x{item}"))
                    .map_err(|e| e.replacen(&format!("'{item}x{item}'"), &format!("'{item}'"), 1))?
            };
            push(size, &mut out);
            if out.len() > max {
                return Err(format!("'{text}': more than {max} sizes"));
            }
        }
    }
    if out.is_empty() {
        return Err(format!("'{text}': no size given"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn squares(sides: &[u32]) -> Vec<(u32, u32)> {
        sides.iter().map(|&s| (s, s)).collect()
    }

    #[test]
    fn singles_pairs_and_ranges_mix() {
        assert_eq!(parse_sizes("384..1024/64", 1000).unwrap().len(), 11);
        assert_eq!(
            parse_sizes("512, 576,832x640,512", 1000).unwrap(),
            vec![(512, 512), (576, 576), (832, 640)]
        );
        // What each command refused of the other's syntax before the grammars were one.
        assert_eq!(
            parse_sizes("512,576..640/64", 1000).unwrap(),
            squares(&[512, 576, 640])
        );
        assert_eq!(parse_sizes("512..576", 1000).unwrap(), squares(&[512, 576]));
        assert_eq!(
            parse_sizes("64..80/8,72,16X8", 1000).unwrap(),
            vec![(64, 64), (72, 72), (80, 80), (16, 8)]
        );
        // A step that overshoots B stops below it.
        assert_eq!(parse_sizes("8..30/16", 1000).unwrap(), squares(&[8, 24]));
    }

    #[test]
    fn refusals_name_the_item() {
        assert!(
            parse_sizes("500", 10)
                .unwrap_err()
                .contains("multiple of 8")
        );
        assert!(
            parse_sizes("512,504x500", 10)
                .unwrap_err()
                .contains("'504x500'")
        );
        assert!(parse_sizes("64..8/8", 10).unwrap_err().contains("A <= B"));
        assert!(
            parse_sizes("8..64/0", 10)
                .unwrap_err()
                .contains("STEP >= 1")
        );
        assert!(
            parse_sizes("a..b/8", 10)
                .unwrap_err()
                .contains("'a' is not a number")
        );
        assert!(parse_sizes("", 10).unwrap_err().contains("no size given"));
        assert!(
            parse_sizes(" , ", 10)
                .unwrap_err()
                .contains("no size given")
        );
    }

    #[test]
    fn the_maximum_bounds_ranges_before_they_expand() {
        assert_eq!(parse_sizes("8..64/8", 8).unwrap().len(), 8);
        assert!(
            parse_sizes("8..72/8", 8)
                .unwrap_err()
                .contains("more than 8")
        );
        assert!(
            parse_sizes("8..4000000000/8", 256)
                .unwrap_err()
                .contains("more than 256")
        );
        assert!(
            parse_sizes("8,16,24", 2)
                .unwrap_err()
                .contains("more than 2")
        );
        // Duplicates do not count.
        assert_eq!(parse_sizes("8,8,8", 1).unwrap(), squares(&[8]));
    }
}
