//! Packing hits into a token budget.

/// Greedily keeps items in the given (score) order while they fit in
/// `budget` tokens; an item that does not fit is skipped and packing goes on
/// with smaller ones. A budget of 0 keeps everything. Returns the kept
/// indices and the tokens they use.
pub fn pack(tokens: &[usize], budget: usize) -> (Vec<usize>, usize) {
    if budget == 0 {
        return ((0..tokens.len()).collect(), tokens.iter().sum());
    }
    let mut used = 0;
    let mut kept = Vec::new();
    for (i, &t) in tokens.iter().enumerate() {
        if used + t <= budget {
            used += t;
            kept.push(i);
        }
    }
    (kept, used)
}

#[cfg(test)]
mod tests {
    use super::pack;

    #[test]
    fn greedy_skips_what_does_not_fit() {
        assert_eq!(pack(&[50, 120, 40, 30], 100), (vec![0, 2], 90));
        assert_eq!(pack(&[250, 10], 200), (vec![1], 10));
        assert_eq!(pack(&[5, 5], 0), (vec![0, 1], 10));
        assert_eq!(pack(&[], 10), (vec![], 0));
        assert_eq!(pack(&[10, 10], 20), (vec![0, 1], 20));
    }
}
