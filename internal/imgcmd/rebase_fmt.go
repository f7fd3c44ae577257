package imgcmd

// qemuFormatNames are the block drivers qemu-img 7.2 (Debian 12's
// qemu-utils) lists under "Supported formats": rebase -F accepts any of
// them, as qemu-img's bdrv_find_format does, and refuses other names with
// "Invalid format name". With -u the name is only recorded; a safe rebase
// opens the new backing file, which ringblk does for raw and qcow2 only.
var qemuFormatNames = map[string]bool{
	"blkdebug": true, "blklogwrites": true, "blkverify": true, "bochs": true, "cloop": true,
	"compress": true, "copy-before-write": true, "copy-on-read": true, "dmg": true, "file": true,
	"ftp": true, "ftps": true, "gluster": true, "host_cdrom": true, "host_device": true,
	"http": true, "https": true, "iscsi": true, "iser": true, "luks": true, "nbd": true,
	"nfs": true, "null-aio": true, "null-co": true, "nvme": true, "parallels": true,
	"preallocate": true, "qcow": true, "qcow2": true, "qed": true, "quorum": true, "raw": true,
	"rbd": true, "replication": true, "snapshot-access": true, "ssh": true, "throttle": true,
	"vdi": true, "vhdx": true, "vmdk": true, "vpc": true, "vvfat": true,
}
