//! Symlinks and the shape of the tree: entries are put into a map of paths (refusing
//! duplicates and paths under a file or link), symlinks are checked lexically (no absolute
//! targets, nothing that leaves the crate relative to the link's own directory), and then the
//! tree is walked from its root, following links inside the tree only, into plain files. Safe
//! links thus become copies; links to nothing are dropped.

use std::collections::{BTreeMap, VecDeque};

use super::limits::{SourceError, SourceLimits};
use super::unpack::{self, Entry, EntryKind, SourceFile, Unpacked};

/// How many symlinks may be followed to resolve one path, as Linux allows (`ELOOP`).
const MAX_LINK_HOPS: usize = 40;

/// How deeply symlinks to directories may nest inside each other before we call it a loop.
const MAX_LINK_DEPTH: usize = 8;

/// Strips the common top directory, builds the tree, refuses clashes and unsafe links, and
/// resolves safe links to copies, within `limits`.
pub(super) fn resolve_tree(
    unpacked: Unpacked,
    limits: &SourceLimits,
) -> Result<BTreeMap<String, SourceFile>, SourceError> {
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    for Entry { mut path, kind } in unpacked.entries {
        if let Some(top) = &unpacked.strip {
            debug_assert_eq!(path.first(), Some(top));
            path.remove(0);
        }
        if path.is_empty() {
            continue;
        }
        let joined = path.join("/");
        let node = match kind {
            EntryKind::Dir => Node::Dir,
            EntryKind::File { bytes, executable } => Node::File(SourceFile { bytes, executable }),
            EntryKind::Symlink { target } => {
                check_link_lexically(&joined, &target)?;
                Node::Link(target)
            }
        };
        insert_node(&mut nodes, &joined, node)?;
    }
    resolve_links(&nodes, limits)
}

/// One path of the tree before symlinks are resolved.
enum Node {
    Dir,
    File(SourceFile),
    Link(String),
}

/// Adds a node and the directories above it, refusing duplicates and paths under a file.
fn insert_node(nodes: &mut BTreeMap<String, Node>, path: &str, node: Node) -> Result<(), SourceError> {
    let mut end = 0;
    while let Some(slash) = path[end..].find('/') {
        let parent = &path[..end + slash];
        match nodes.get(parent) {
            None => {
                nodes.insert(parent.to_owned(), Node::Dir);
            }
            Some(Node::Dir) => {}
            Some(_) => {
                return Err(SourceError::Conflict {
                    entry: path.to_owned(),
                    reason: format!("`{parent}` is a file or symlink, not a directory"),
                });
            }
        }
        end += slash + 1;
    }
    match (nodes.get(path), &node) {
        (None, _) | (Some(Node::Dir), Node::Dir) => {
            nodes.insert(path.to_owned(), node);
            Ok(())
        }
        _ => Err(SourceError::Conflict {
            entry: path.to_owned(),
            reason: "the archive holds this path twice".to_owned(),
        }),
    }
}

/// Splits a link target into components; `/` and `\` both separate.
fn target_components(target: &str) -> impl Iterator<Item = &str> {
    target.split(['/', '\\']).filter(|c| !c.is_empty() && *c != ".")
}

/// Refuses a symlink that is absolute or whose target, taken relative to the link's own
/// directory without looking at other links, leaves the crate.
fn check_link_lexically(link: &str, target: &str) -> Result<(), SourceError> {
    let refuse = |reason| SourceError::UnsafeLink { entry: link.to_owned(), target: target.to_owned(), reason };
    if target.starts_with(['/', '\\']) || unpack::has_windows_prefix(target) {
        return Err(refuse("it points to an absolute path"));
    }
    let mut depth = link.split('/').count() - 1;
    for component in target_components(target) {
        if component == ".." {
            depth = depth.checked_sub(1).ok_or_else(|| refuse("it points outside the crate"))?;
        } else {
            depth += 1;
        }
    }
    Ok(())
}

/// What a symlink leads to inside the tree.
enum Resolved {
    File(String),
    Dir(String),
    Missing,
}

/// Follows `link` (and any links met on the way) inside the tree, never outside it.
fn resolve(nodes: &BTreeMap<String, Node>, link: &str, target: &str) -> Result<Resolved, SourceError> {
    let refuse = |reason| SourceError::UnsafeLink { entry: link.to_owned(), target: target.to_owned(), reason };
    let mut stack: Vec<String> = link.split('/').map(str::to_owned).collect();
    stack.pop();
    let mut pending: VecDeque<String> = target_components(target).map(str::to_owned).collect();
    let mut hops = 0;
    while let Some(component) = pending.pop_front() {
        if component == ".." {
            stack.pop().ok_or_else(|| refuse("it points outside the crate"))?;
            continue;
        }
        stack.push(component);
        match nodes.get(&stack.join("/")) {
            Some(Node::Dir) => {}
            Some(Node::File(_)) if pending.is_empty() => return Ok(Resolved::File(stack.join("/"))),
            Some(Node::File(_)) | None => return Ok(Resolved::Missing),
            Some(Node::Link(next)) => {
                hops += 1;
                if hops > MAX_LINK_HOPS {
                    return Err(refuse("it is part of a symlink loop"));
                }
                if next.starts_with(['/', '\\']) || unpack::has_windows_prefix(next) {
                    return Err(refuse("it leads to a symlink to an absolute path"));
                }
                stack.pop();
                for part in target_components(next).collect::<Vec<_>>().into_iter().rev() {
                    pending.push_front(part.to_owned());
                }
            }
        }
    }
    Ok(Resolved::Dir(stack.join("/")))
}

/// Walks the tree from its root, following links, into a map of regular files.
fn resolve_links(
    nodes: &BTreeMap<String, Node>,
    limits: &SourceLimits,
) -> Result<BTreeMap<String, SourceFile>, SourceError> {
    let mut walk = Walk { nodes, limits, files: BTreeMap::new(), bytes: 0 };
    walk.dir("", "", 0)?;
    Ok(walk.files)
}

struct Walk<'a> {
    nodes: &'a BTreeMap<String, Node>,
    limits: &'a SourceLimits,
    files: BTreeMap<String, SourceFile>,
    bytes: u64,
}

impl Walk<'_> {
    /// Copies the directory at `real` (a path without links) to `out` in the result.
    fn dir(&mut self, real: &str, out: &str, depth: usize) -> Result<(), SourceError> {
        let prefix = if real.is_empty() { String::new() } else { format!("{real}/") };
        let children: Vec<(&String, &Node)> = self
            .nodes
            .range(prefix.clone()..)
            .take_while(|(path, _)| path.starts_with(&prefix))
            .filter(|(path, _)| !path[prefix.len()..].contains('/'))
            .collect();
        for (path, node) in children {
            let name = &path[prefix.len()..];
            let out_path = if out.is_empty() { name.to_owned() } else { format!("{out}/{name}") };
            match node {
                Node::Dir => self.dir(path, &out_path, depth)?,
                Node::File(file) => self.emit(out_path, file)?,
                Node::Link(target) => match resolve(self.nodes, path, target)? {
                    Resolved::Missing => {}
                    Resolved::File(real_file) => {
                        if let Some(Node::File(file)) = self.nodes.get(&real_file) {
                            self.emit(out_path, file)?;
                        }
                    }
                    // A link may not bring back a directory that is left out where it stands
                    // (`.cargo -> cfg` would make cargo honour `cfg/config.toml`).
                    Resolved::Dir(_) if unpack::SKIPPED_DIRS.contains(&name) => {}
                    Resolved::Dir(real_dir) => {
                        let is_ancestor = real_dir.is_empty() || path.starts_with(&format!("{real_dir}/"));
                        if is_ancestor || depth >= MAX_LINK_DEPTH {
                            return Err(SourceError::UnsafeLink {
                                entry: path.clone(),
                                target: target.clone(),
                                reason: "it makes a directory loop",
                            });
                        }
                        self.dir(&real_dir, &out_path, depth + 1)?;
                    }
                },
            }
        }
        Ok(())
    }

    fn emit(&mut self, path: String, file: &SourceFile) -> Result<(), SourceError> {
        if self.files.len() >= self.limits.max_files {
            return Err(SourceError::TooManyFiles { limit: self.limits.max_files });
        }
        self.bytes += file.bytes.len() as u64;
        if self.bytes > self.limits.max_bytes {
            return Err(SourceError::TooLarge { limit: self.limits.max_bytes });
        }
        self.files.insert(path, file.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_link_check_allows_links_within_the_crate_only() {
        assert!(check_link_lexically("src/a.rs", "b.rs").is_ok());
        assert!(check_link_lexically("src/a.rs", "../README.md").is_ok());
        assert!(check_link_lexically("src/a.rs", "./x/../../Cargo.toml").is_ok());
        for target in ["../../x", "../x/../../y", "/etc/passwd", "\\\\server\\x", "C:\\x"] {
            let error = check_link_lexically("src/a.rs", target).unwrap_err().to_string();
            assert!(error.contains("`src/a.rs`"), "{error}");
        }
    }

    #[test]
    fn resolving_follows_chains_but_never_leaves_the_root() {
        let mut nodes = BTreeMap::new();
        let file = || Node::File(SourceFile::new(b"x".to_vec()));
        insert_node(&mut nodes, "a/b/file", file()).unwrap();
        insert_node(&mut nodes, "a/up", Node::Link("..".into())).unwrap();
        insert_node(&mut nodes, "hop", Node::Link("a/b/file".into())).unwrap();
        // Lexically `a/up/..` is `a`, but `a/up` is the root, so its parent is outside.
        assert!(matches!(resolve(&nodes, "esc", "a/up/.."), Err(SourceError::UnsafeLink { .. })));
        assert!(matches!(resolve(&nodes, "x", "hop"), Ok(Resolved::File(p)) if p == "a/b/file"));
        assert!(matches!(resolve(&nodes, "x", "a/b/file/.."), Ok(Resolved::Missing)));
        assert!(matches!(resolve(&nodes, "x", "a/up/a"), Ok(Resolved::Dir(p)) if p == "a"));
    }

    #[test]
    fn paths_under_a_file_or_link_are_refused() {
        let mut nodes = BTreeMap::new();
        insert_node(&mut nodes, "evil", Node::Link("src".into())).unwrap();
        let error = insert_node(&mut nodes, "evil/x", Node::Dir).unwrap_err().to_string();
        assert!(error.contains("`evil` is a file or symlink"), "{error}");
    }
}
