//! RFC 9162 §2.1 Merkle trees over the log's entries.
//!
//! Proof generation takes the leaf hashes of the whole log (`&[Hash]`) and is O(n) per proof; verification is
//! O(log n) and needs only the proof. [`Frontier`] keeps the perfect subtrees' roots so appending is O(log n).

use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// `SHA-256(0x00 || entry)`.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The hash of the empty tree: `SHA-256()`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The largest power of two smaller than `n` (`n >= 2`).
fn split(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// `MTH(D[n])` over leaf hashes.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// Why a proof cannot be made or does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The index or sizes are outside the tree.
    #[error("index or size outside the tree")]
    OutOfRange,
    /// The proof does not lead to the given root(s).
    #[error("proof does not verify")]
    Mismatch,
}

/// `PATH(m, D[n])`: the inclusion proof of leaf `index` in the tree of `leaves` (RFC 9162 §2.1.3.1).
pub fn inclusion_proof(leaves: &[Hash], index: usize) -> Result<Vec<Hash>, ProofError> {
    if index >= leaves.len() {
        return Err(ProofError::OutOfRange);
    }
    let mut path = Vec::new();
    path_into(leaves, index, &mut path);
    Ok(path)
}

fn path_into(leaves: &[Hash], m: usize, out: &mut Vec<Hash>) {
    let n = leaves.len();
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path_into(&leaves[..k], m, out);
        out.push(root(&leaves[k..]));
    } else {
        path_into(&leaves[k..], m - k, out);
        out.push(root(&leaves[..k]));
    }
}

/// Verifies an inclusion proof (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(leaf: &Hash, index: u64, tree_size: u64, path: &[Hash], root: &Hash) -> Result<(), ProofError> {
    if index >= tree_size {
        return Err(ProofError::OutOfRange);
    }
    let (mut f, mut s) = (index, tree_size - 1);
    let mut r = *leaf;
    for p in path {
        if s == 0 {
            return Err(ProofError::Mismatch);
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s == 0 && r == *root {
        Ok(())
    } else {
        Err(ProofError::Mismatch)
    }
}

/// `PROOF(m, D[n])`: the consistency proof that the tree of the first `first` leaves is a prefix of the tree of all
/// `leaves` (RFC 9162 §2.1.4.1). Empty when `first` is 0 or the whole tree.
pub fn consistency_proof(leaves: &[Hash], first: usize) -> Result<Vec<Hash>, ProofError> {
    if first > leaves.len() {
        return Err(ProofError::OutOfRange);
    }
    let mut out = Vec::new();
    if first > 0 && first < leaves.len() {
        subproof(first, leaves, true, &mut out);
    }
    Ok(out)
}

fn subproof(m: usize, leaves: &[Hash], complete: bool, out: &mut Vec<Hash>) {
    let n = leaves.len();
    if m == n {
        if !complete {
            out.push(root(leaves));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, &leaves[..k], complete, out);
        out.push(root(&leaves[k..]));
    } else {
        subproof(m - k, &leaves[k..], false, out);
        out.push(root(&leaves[..k]));
    }
}

/// Verifies a consistency proof between `(first, first_root)` and `(second, second_root)` (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    first: u64,
    second: u64,
    proof: &[Hash],
    first_root: &Hash,
    second_root: &Hash,
) -> Result<(), ProofError> {
    if first > second {
        return Err(ProofError::OutOfRange);
    }
    if first == second {
        return if proof.is_empty() && first_root == second_root { Ok(()) } else { Err(ProofError::Mismatch) };
    }
    if first == 0 {
        // The empty tree is a prefix of every tree.
        return if proof.is_empty() { Ok(()) } else { Err(ProofError::Mismatch) };
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(*first_root);
    }
    path.extend_from_slice(proof);
    let Some((head, rest)) = path.split_first() else { return Err(ProofError::Mismatch) };
    let (mut f, mut s) = (first - 1, second - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*head, *head);
    for c in rest {
        if s == 0 {
            return Err(ProofError::Mismatch);
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if fr == *first_root && sr == *second_root && s == 0 {
        Ok(())
    } else {
        Err(ProofError::Mismatch)
    }
}

/// The roots of the perfect subtrees an append-only log's leaves form, largest first: the tree's root in O(log n)
/// per append without keeping the leaves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// `(height, root)` of each perfect subtree, left to right (heights strictly decreasing).
    subtrees: Vec<(u32, Hash)>,
}

impl Frontier {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds the frontier of existing leaves.
    pub fn from_leaves(leaves: &[Hash]) -> Self {
        let mut f = Self::new();
        for l in leaves {
            f.push(*l);
        }
        f
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut node = (0u32, leaf);
        while let Some(&(h, left)) = self.subtrees.last() {
            if h != node.0 {
                break;
            }
            self.subtrees.pop();
            node = (h + 1, node_hash(&left, &node.1));
        }
        self.subtrees.push(node);
        self.size += 1;
    }

    /// The root hash (MTH of all leaves).
    pub fn root(&self) -> Hash {
        let mut it = self.subtrees.iter().rev();
        let Some(&(_, last)) = it.next() else { return empty_root() };
        it.fold(last, |acc, (_, left)| node_hash(left, &acc))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(format!("entry {i}").as_bytes())).collect()
    }

    /// RFC 9162 hashing pinned by hand: 1, 2 and 3 leaves, and the empty tree.
    #[test]
    fn known_answers() {
        assert_eq!(hex::encode(empty_root()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        // SHA-256(0x00) = leaf hash of the empty entry (the value Certificate Transparency's test data uses).
        assert_eq!(hex::encode(leaf_hash(b"")), "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d");
        let l = leaves(3);
        assert_eq!(root(&l[..1]), l[0]);
        assert_eq!(root(&l[..2]), node_hash(&l[0], &l[1]));
        assert_eq!(root(&l), node_hash(&node_hash(&l[0], &l[1]), &l[2]));
    }

    #[test]
    fn every_inclusion_and_consistency_proof_up_to_70_leaves() {
        let all = leaves(70);
        for n in 1..=all.len() {
            let tree = &all[..n];
            let r = root(tree);
            assert_eq!(Frontier::from_leaves(tree).root(), r, "frontier root at {n}");
            for i in 0..n {
                let p = inclusion_proof(tree, i).unwrap();
                verify_inclusion(&tree[i], i as u64, n as u64, &p, &r).unwrap();
                // The proof is for this index only.
                if n > 1 {
                    let j = (i + 1) % n;
                    assert!(verify_inclusion(&tree[j], i as u64, n as u64, &p, &r).is_err());
                }
            }
            for m in 0..=n {
                let p = consistency_proof(tree, m).unwrap();
                verify_consistency(m as u64, n as u64, &p, &root(&tree[..m]), &r).unwrap();
                if m > 0 && m < n {
                    let wrong = root(&all[1..m + 1]);
                    assert!(verify_consistency(m as u64, n as u64, &p, &wrong, &r).is_err(), "{m} of {n}");
                }
            }
        }
    }

    #[test]
    fn out_of_range_is_an_error() {
        let l = leaves(4);
        assert_eq!(inclusion_proof(&l, 4), Err(ProofError::OutOfRange));
        assert_eq!(consistency_proof(&l, 5), Err(ProofError::OutOfRange));
        assert_eq!(verify_inclusion(&l[0], 4, 4, &[], &root(&l)), Err(ProofError::OutOfRange));
        assert_eq!(verify_consistency(5, 4, &[], &root(&l), &root(&l)), Err(ProofError::OutOfRange));
    }

    proptest! {
        /// A changed leaf, a changed proof element or a truncated or extended proof never verifies.
        #[test]
        fn tampered_proofs_fail(n in 2usize..300, i in any::<prop::sample::Index>(), m in any::<prop::sample::Index>(),
                                at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let tree = leaves(n);
            let r = root(&tree);
            let i = i.index(n);
            let mut p = inclusion_proof(&tree, i).unwrap();
            if !p.is_empty() {
                let k = at.index(p.len());
                p[k][0] ^= 1 << bit;
                prop_assert!(verify_inclusion(&tree[i], i as u64, n as u64, &p, &r).is_err());
            }
            let p = inclusion_proof(&tree, i).unwrap();
            prop_assert!(verify_inclusion(&tree[i], i as u64, n as u64, &p[..p.len().saturating_sub(1)], &r).is_err() || p.is_empty());
            let mut longer = p.clone();
            longer.push(r);
            prop_assert!(verify_inclusion(&tree[i], i as u64, n as u64, &longer, &r).is_err());
            let m = 1 + m.index(n - 1);
            let mut c = consistency_proof(&tree, m).unwrap();
            let k = at.index(c.len());
            c[k][31] ^= 1 << bit;
            prop_assert!(verify_consistency(m as u64, n as u64, &c, &root(&tree[..m]), &r).is_err());
        }
    }
}
