//! The FUSE glue: decodes each request, calls the matching `do_*` function
//! and sends its result or errno. No filesystem logic lives here.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, FileHandle, FileType, Filesystem, Generation,
    INodeNo, IoctlFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::attr::{FileAttr, decode_dev};
use crate::fs::Plyfs;
use crate::names;
use crate::ops::Caller;
use crate::ops::create::NewObject;
use crate::ops::dir::PlusEntry;
use crate::ops::setattr::SetAttr;
use crate::sys::Errno;
use crate::sys::fs::TimeSpec;
use crate::table::Held;

/// The `fuser::Filesystem` implementation over a [`Plyfs`].
pub struct FuseFs {
    pub fs: Arc<Plyfs>,
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        umask: 0,
    }
}

fn creator(req: &Request, umask: u32) -> Caller {
    Caller {
        umask,
        ..caller(req)
    }
}

fn time_spec(t: Option<TimeOrNow>) -> Option<TimeSpec> {
    t.map(|t| match t {
        TimeOrNow::Now => TimeSpec::Now,
        TimeOrNow::SpecificTime(st) => match st.duration_since(UNIX_EPOCH) {
            Ok(d) => TimeSpec::Set(d.as_secs() as i64, d.subsec_nanos()),
            Err(e) => {
                let d = e.duration();
                let (s, ns) = (d.as_secs() as i64, d.subsec_nanos());
                if ns == 0 {
                    TimeSpec::Set(-s, 0)
                } else {
                    TimeSpec::Set(-s - 1, 1_000_000_000 - ns)
                }
            }
        },
    })
}

/// The FUSE library's attribute type for plyfs's.
pub(crate) fn fuse_attr(a: &FileAttr) -> fuser::FileAttr {
    fuser::FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: UNIX_EPOCH,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

/// The FUSE file type for `S_IFMT` bits.
fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

impl From<Errno> for fuser::Errno {
    fn from(e: Errno) -> fuser::Errno {
        fuser::Errno::from_i32(e.code())
    }
}

impl FuseFs {
    fn ttl(&self) -> Duration {
        self.fs.cfg.ttl
    }

    /// Replies with a new entry and hands its reference to the kernel.
    fn entry(&self, reply: ReplyEntry, res: Result<(Held<'_>, FileAttr), Errno>) {
        match res {
            Ok((node, attr)) => {
                reply.entry(&self.ttl(), &fuse_attr(&attr), Generation(node.generation));
                node.into_kernel();
            }
            Err(e) => reply.error(e.into()),
        }
    }

    fn create_entry(
        &self,
        who: Caller,
        parent: INodeNo,
        name: &OsStr,
        what: NewObject<'_>,
        reply: ReplyEntry,
    ) {
        let res = names::check(name)
            .and_then(|n| self.fs.do_create_object(parent.0, &n, what, who))
            .map(|c| (c.node, c.attr));
        self.entry(reply, res);
    }
}

impl Filesystem for FuseFs {
    fn destroy(&mut self) {
        if let Some(u) = &self.fs.upper {
            u.work.finish();
        }
        self.fs.quota_save();
    }

    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        crate::tuning::configure(&self.fs, config);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _t = crate::stats::start(crate::stats::Op::lookup);
        match names::check(name).and_then(|n| self.fs.do_lookup(parent.0, &n)) {
            Ok(Some(found)) => self.entry(reply, Ok(found)),
            Ok(None) => reply.entry(
                &self.ttl(),
                &fuse_attr(&FileAttr::negative()),
                Generation(0),
            ),
            Err(e) => reply.error(e.into()),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        crate::stats::count(crate::stats::Op::forget);
        self.fs.do_forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let _t = crate::stats::start(crate::stats::Op::getattr);
        match self.fs.do_getattr(ino.0, fh.map(|f| f.0)) {
            Ok(attr) => reply.attr(&self.ttl(), &fuse_attr(&attr)),
            Err(e) => reply.error(e.into()),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _t = crate::stats::start(crate::stats::Op::setattr);
        let a = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: time_spec(atime),
            mtime: time_spec(mtime),
            fh: fh.map(|f| f.0),
        };
        let res = self.fs.do_setattr(ino.0, a).and_then(|attr| {
            if !fuser::kill_suidgid_requested() {
                return Ok(attr);
            }
            Ok(self.fs.do_kill_suidgid(ino.0)?.unwrap_or(attr))
        });
        match res {
            Ok(attr) => reply.attr(&self.ttl(), &fuse_attr(&attr)),
            Err(e) => reply.error(e.into()),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _t = crate::stats::start(crate::stats::Op::readlink);
        match self.fs.do_readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e.into()),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _t = crate::stats::start(crate::stats::Op::mknod);
        let what = if mode & libc::S_IFMT == libc::S_IFREG {
            NewObject::File {
                mode,
                flags: libc::O_WRONLY,
            }
        } else {
            NewObject::Special {
                mode,
                rdev: decode_dev(rdev),
            }
        };
        self.create_entry(creator(req, umask), parent, name, what, reply);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let _t = crate::stats::start(crate::stats::Op::mkdir);
        self.create_entry(
            creator(req, umask),
            parent,
            name,
            NewObject::Dir { mode },
            reply,
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _t = crate::stats::start(crate::stats::Op::unlink);
        done(
            reply,
            names::check(name).and_then(|n| self.fs.do_unlink(parent.0, &n)),
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _t = crate::stats::start(crate::stats::Op::rmdir);
        done(
            reply,
            names::check(name).and_then(|n| self.fs.do_rmdir(parent.0, &n)),
        );
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let _t = crate::stats::start(crate::stats::Op::symlink);
        let target = target.as_os_str().as_bytes();
        self.create_entry(
            caller(req),
            parent,
            link_name,
            NewObject::Symlink { target },
            reply,
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _t = crate::stats::start(crate::stats::Op::rename);
        let res = names::check(name).and_then(|a| {
            let b = names::check(newname)?;
            self.fs
                .do_rename(parent.0, &a, newparent.0, &b, flags.bits())
        });
        done(reply, res);
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _t = crate::stats::start(crate::stats::Op::link);
        match self.fs.node(ino.0) {
            Ok(source) => self.create_entry(
                caller(req),
                newparent,
                newname,
                NewObject::Link { source },
                reply,
            ),
            Err(e) => reply.error(e.into()),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _t = crate::stats::start(crate::stats::Op::open);
        let res = self
            .fs
            .do_open(ino.0, flags.0, req.uid())
            .and_then(|opened| {
                if fuser::kill_suidgid_requested() && self.fs.do_kill_suidgid(ino.0)?.is_some() {
                    // The open reply carries no attributes.
                    self.fs.kernel.attrs_changed(ino.0);
                }
                Ok(opened)
            });
        match res {
            Ok((fh, f)) => crate::tuning::reply_open(&self.fs, reply, fh, &f),
            Err(e) => reply.error(e.into()),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _t = crate::stats::start(crate::stats::Op::read);
        match self.fs.do_read(fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e.into()),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _t = crate::stats::start(crate::stats::Op::write);
        let res = self.fs.do_write(fh.0, offset, data).and_then(|n| {
            if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID)
                && self.fs.do_kill_suidgid(ino.0)?.is_some()
            {
                // The write reply carries no attributes.
                self.fs.kernel.attrs_changed(ino.0);
            }
            Ok(n)
        });
        match res {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(e.into()),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let _t = crate::stats::start(crate::stats::Op::flush);
        // Nothing to do on close(2): ENOSYS makes the kernel stop sending
        // FLUSH (it still writes dirty pages back before that check).
        reply.error(Errno::ENOSYS.into());
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _t = crate::stats::start(crate::stats::Op::release);
        self.fs.do_release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _t = crate::stats::start(crate::stats::Op::fsync);
        done(reply, self.fs.do_fsync(fh.0, datasync));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _t = crate::stats::start(crate::stats::Op::opendir);
        if self
            .fs
            .io
            .no_opendir
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            // The kernel then opens directories itself, with cached listings.
            reply.error(Errno::ENOSYS.into());
            return;
        }
        match self.fs.do_opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), crate::tuning::dir_open_flags(&self.fs)),
            Err(e) => reply.error(e.into()),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _t = crate::stats::start(crate::stats::Op::readdir);
        let res = self.fs.do_readdir(ino.0, fh.0, offset, |item| {
            !reply.add(
                INodeNo(item.ino),
                item.next,
                file_type(item.kind),
                OsStr::from_bytes(&item.name),
            )
        });
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.into()),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _t = crate::stats::start(crate::stats::Op::readdirplus);
        let ttl = self.ttl();
        let res = self.fs.do_readdirplus(ino.0, fh.0, offset, |item, entry| {
            let name = OsStr::from_bytes(&item.name);
            match entry {
                PlusEntry::Full(attr, generation) => !reply.add(
                    INodeNo(item.ino),
                    item.next,
                    name,
                    &ttl,
                    &fuse_attr(attr),
                    Generation(generation),
                ),
                // Node id 0: a plain entry; its d_ino is item.ino (see
                // vendor/fuser/PATCHES.md) and its type comes from the mode.
                PlusEntry::NamesOnly => {
                    let mut attr = FileAttr::negative();
                    attr.kind = item.kind;
                    !reply.add(
                        INodeNo(item.ino),
                        item.next,
                        name,
                        &Duration::ZERO,
                        &fuse_attr(&attr),
                        Generation(0),
                    )
                }
            }
        });
        match res {
            Ok(refs) => {
                reply.ok();
                refs.into_iter().for_each(|r| drop(r.into_kernel()));
            }
            Err(e) => reply.error(e.into()),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let _t = crate::stats::start(crate::stats::Op::releasedir);
        self.fs.do_releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _t = crate::stats::start(crate::stats::Op::fsyncdir);
        done(reply, self.fs.do_fsyncdir(ino.0, datasync));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _t = crate::stats::start(crate::stats::Op::statfs);
        match self.fs.do_statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(e.into()),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _t = crate::stats::start(crate::stats::Op::setxattr);
        done(
            reply,
            self.fs.do_setxattr(ino.0, name.as_bytes(), value, flags),
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _t = crate::stats::start(crate::stats::Op::getxattr);
        reply_xattr(self.fs.do_getxattr(ino.0, name.as_bytes()), size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _t = crate::stats::start(crate::stats::Op::listxattr);
        reply_xattr(self.fs.do_listxattr(ino.0), size, reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _t = crate::stats::start(crate::stats::Op::removexattr);
        done(reply, self.fs.do_removexattr(ino.0, name.as_bytes()));
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let _t = crate::stats::start(crate::stats::Op::access);
        done(reply, self.fs.do_access(ino.0, mask.bits(), caller(req)));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _t = crate::stats::start(crate::stats::Op::create);
        let res = names::check(name).and_then(|n| {
            self.fs.do_create_object(
                parent.0,
                &n,
                NewObject::File { mode, flags },
                creator(req, umask),
            )
        });
        match res {
            Ok(c) => {
                let Some(fd) = c.fd else {
                    reply.error(Errno::EIO.into());
                    return;
                };
                // O_CREAT on an existing file may have opened a lower or
                // metacopy file's data.
                let on_upper = self.fs.upper_has_data(&c.node);
                let (fh, f) = self
                    .fs
                    .register_file((*c.node).clone(), fd, on_upper, flags);
                crate::tuning::reply_create(
                    &self.fs,
                    reply,
                    &fuse_attr(&c.attr),
                    c.node.generation,
                    fh,
                    &f,
                );
                c.node.into_kernel();
            }
            Err(e) => reply.error(e.into()),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _t = crate::stats::start(crate::stats::Op::fallocate);
        done(reply, self.fs.do_fallocate(fh.0, offset, length, mode));
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let _t = crate::stats::start(crate::stats::Op::lseek);
        match self.fs.do_lseek(fh.0, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(e.into()),
        }
    }

    fn ioctl(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        out_size: u32,
        reply: ReplyIoctl,
    ) {
        let _t = crate::stats::start(crate::stats::Op::ioctl);
        // The kernel sends these for lsattr/chattr (its fileattr calls), with
        // the flags as a 4-byte int and struct fsxattr as 28 bytes.
        const GETFLAGS: [u32; 2] = [0x8008_6601, 0x8004_6601];
        const SETFLAGS: [u32; 2] = [0x4008_6602, 0x4004_6602];
        const FSGETXATTR: u32 = 0x801c_581f;
        const FSSETXATTR: u32 = 0x401c_5820;
        let ino = ino.0;
        let res: Result<Vec<u8>, Errno> = match cmd {
            c if GETFLAGS.contains(&c) => self
                .fs
                .do_get_inode_flags(ino)
                .map(|f| f.to_ne_bytes().to_vec()),
            c if SETFLAGS.contains(&c) => {
                match <[u8; 4]>::try_from(in_data.get(..4).unwrap_or(&[])) {
                    Ok(b) => self
                        .fs
                        .do_set_inode_flags(ino, u32::from_ne_bytes(b))
                        .map(|()| Vec::new()),
                    Err(_) => Err(Errno::EINVAL),
                }
            }
            FSGETXATTR => self.fs.do_get_fsxattr(ino).map(|a| a.to_vec()),
            FSSETXATTR => match <[u8; crate::sys::io::FSXATTR_SIZE]>::try_from(in_data) {
                Ok(a) => self.fs.do_set_fsxattr(ino, a).map(|()| Vec::new()),
                Err(_) => Err(Errno::EINVAL),
            },
            _ => Err(Errno::ENOTTY),
        };
        match res {
            Ok(v) if v.len() <= out_size as usize => reply.ioctl(0, &v),
            Ok(_) => reply.error(Errno::EINVAL.into()),
            Err(e) => reply.error(e.into()),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let _t = crate::stats::start(crate::stats::Op::copy_file_range);
        match self
            .fs
            .do_copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len)
        {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(e.into()),
        }
    }
}

/// Sends the result of an operation that returns nothing.
fn done(reply: ReplyEmpty, res: Result<(), Errno>) {
    match res {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e.into()),
    }
}

fn reply_xattr(res: Result<Vec<u8>, Errno>, size: u32, reply: ReplyXattr) {
    match res {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE.into()),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(e.into()),
    }
}
