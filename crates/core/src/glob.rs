//! Glob patterns over probe keys.
//!
//! Keys are dotted diffusers module paths (`unet.down_blocks.1.attentions.0`), so the pattern
//! language is deliberately small: `*` matches any run of characters (dots included), `?` matches
//! exactly one character, everything else matches itself. Matching is linear in practice
//! (greedy with single backtrack point), never exponential.

/// Does `key` match `pattern`?
pub fn matches(pattern: &str, key: &str) -> bool {
    let p = pattern.as_bytes();
    let k = key.as_bytes();
    let (mut pi, mut ki) = (0usize, 0usize);
    // Position after the last `*` seen, and the key position it is currently matched up to.
    let mut star: Option<(usize, usize)> = None;
    while ki < k.len() {
        if pi < p.len() && (p[pi] == b'?' || (p[pi] != b'*' && p[pi] == k[ki])) {
            pi += 1;
            ki += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi + 1, ki));
            pi += 1;
        } else if let Some((sp, sk)) = star {
            pi = sp;
            ki = sk + 1;
            star = Some((sp, sk + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn literal_and_wildcards() {
        assert!(matches("image", "image"));
        assert!(!matches("image", "images"));
        assert!(matches("*", ""));
        assert!(matches("unet.*", "unet.down_blocks.1.attentions.0"));
        assert!(matches(
            "unet.*.attn?",
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1"
        ));
        assert!(!matches(
            "unet.*.attn?",
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.ff"
        ));
        assert!(matches("*attention*", "unet.mid_block.attentions.0"));
        assert!(!matches("*attn*", "unet.mid_block.attentions.0"));
        assert!(matches("sampler.*", "sampler.eps.cond"));
        assert!(!matches("sampler.*", "sample"));
        assert!(matches("a*b*c", "aXXbYYc"));
        assert!(!matches("a*b*c", "aXXbYY"));
        assert!(matches("**", "x.y"));
    }
}
