//! COPY and ADD: the sources written into a new layer over the stage's
//! tree, with the owner `--chown` names.

use super::*;

impl<'a> Solver<'a> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn exec_copy<'t>(
        &self,
        step: &CopyStep,
        writer: &mut Writer<'t>,
        lower: &LayeredTree,
        tree: &Rc<dyn SourceTree + 't>,
        matches: &[copy::SourceMatch],
        excludes: Option<&Matcher>,
        keep_owners: bool,
    ) -> Result<()> {
        let chown = match &step.chown {
            Some(spec) => Some(resolve_user(lower, spec)?),
            None => None,
        };
        let chmod = match &step.chmod {
            Some(c) => Some(Chmod::parse(c).ok_or_else(|| SolveErrorKind::BadChmod(c.clone()))?),
            None => None,
        };
        writer.set_options(chown, chmod, keep_owners);
        if step.add {
            return self.exec_add(step, writer, tree, matches, excludes);
        }
        writer.copy(tree, matches, &step.dest, excludes)?;
        for c in &step.contents {
            writer.write_file(&step.dest, &c.path, c.data.as_bytes())?;
        }
        Ok(())
    }

    /// ADD: local archives are extracted at the destination, other files
    /// copied as COPY would.
    pub(super) fn exec_add<'t>(
        &self,
        step: &CopyStep,
        writer: &mut Writer<'t>,
        tree: &Rc<dyn SourceTree + 't>,
        matches: &[copy::SourceMatch],
        excludes: Option<&Matcher>,
    ) -> Result<()> {
        let unpack = step.unpack.unwrap_or(true);
        let mut plain = Vec::new();
        for m in matches {
            let is_file = matches!(
                tree.stat(&m.path)?,
                Some(tree::Meta {
                    kind: tree::EntryKind::File,
                    ..
                })
            );
            if unpack && is_file && copy::is_archive(tree.open(&m.path)?) {
                let extracted = self.store.temp_dir("add")?;
                copy::extract_archive(tree.open(&m.path)?, extracted.path())?;
                writer.add_extracted(extracted, &step.dest)?;
            } else {
                plain.push(m.clone());
            }
        }
        writer.copy(tree, &plain, &step.dest, excludes)?;
        for c in &step.contents {
            writer.write_file(&step.dest, &c.path, c.data.as_bytes())?;
        }
        Ok(())
    }
}

/// `--chown` of a step, resolved against the image.
pub(super) fn writer_chown(lower: &LayeredTree, copy: &CopyStep) -> Result<Option<(u32, u32)>> {
    match &copy.chown {
        Some(spec) => Ok(Some(resolve_user(lower, spec)?)),
        None => Ok(None),
    }
}
