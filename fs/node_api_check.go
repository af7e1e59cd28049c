package fs

import (
	fusefs "github.com/hanwen/go-fuse/v2/fs"
)

// The FUSE surface of flechefs, one line per operation each type answers.
// Anything not listed gets go-fuse's default (see doc.go for the refusals
// that are explicit because the default would be success).

// The root directory.
var (
	_ = (fusefs.InodeEmbedder)((*root)(nil))
	_ = (fusefs.NodeOnAdder)((*root)(nil))
	_ = (fusefs.NodeOnForgetter)((*root)(nil))
	_ = (fusefs.NodeGetattrer)((*root)(nil))
	_ = (fusefs.NodeSetattrer)((*root)(nil))
	_ = (fusefs.NodeLookuper)((*root)(nil))
	_ = (fusefs.NodeCreater)((*root)(nil))
	_ = (fusefs.NodeUnlinker)((*root)(nil))
	_ = (fusefs.NodeOpendirHandler)((*root)(nil))
	_ = (fusefs.NodeStatfser)((*root)(nil))
	_ = (fusefs.NodeMkdirer)((*root)(nil))
	_ = (fusefs.NodeMknoder)((*root)(nil))
	_ = (fusefs.NodeSymlinker)((*root)(nil))
	_ = (fusefs.NodeLinker)((*root)(nil))
	_ = (fusefs.NodeRenamer)((*root)(nil))
	_ = (fusefs.NodeRmdirer)((*root)(nil))
	_ = (fusefs.NodeGetxattrer)((*root)(nil))
	_ = (fusefs.NodeListxattrer)((*root)(nil))
	_ = (fusefs.NodeSetxattrer)((*root)(nil))
	_ = (fusefs.NodeRemovexattrer)((*root)(nil))
)

// The root's directory handle.
var (
	_ = (fusefs.FileReaddirenter)((*dirHandle)(nil))
	_ = (fusefs.FileSeekdirer)((*dirHandle)(nil))
	_ = (fusefs.FileLookuper)((*dirHandle)(nil))
	_ = (fusefs.FileFsyncdirer)((*dirHandle)(nil))
	_ = (fusefs.FileReleasedirer)((*dirHandle)(nil))
)

// A published entry and its read handle.
var (
	_ = (fusefs.InodeEmbedder)((*entryNode)(nil))
	_ = (fusefs.NodeOnForgetter)((*entryNode)(nil))
	_ = (fusefs.NodeGetattrer)((*entryNode)(nil))
	_ = (fusefs.NodeSetattrer)((*entryNode)(nil))
	_ = (fusefs.NodeOpener)((*entryNode)(nil))
	_ = (fusefs.NodeFsyncer)((*entryNode)(nil))
	_ = (fusefs.NodeGetxattrer)((*entryNode)(nil))
	_ = (fusefs.NodeListxattrer)((*entryNode)(nil))
	_ = (fusefs.NodeSetxattrer)((*entryNode)(nil))
	_ = (fusefs.NodeRemovexattrer)((*entryNode)(nil))

	_ = (fusefs.FileReader)((*readHandle)(nil))
	_ = (fusefs.FileReleaser)((*readHandle)(nil))
)

// A value being written: the writer's inode and its write handle.
var (
	_ = (fusefs.InodeEmbedder)((*writerNode)(nil))
	_ = (fusefs.NodeGetattrer)((*writerNode)(nil))
	_ = (fusefs.NodeSetattrer)((*writerNode)(nil))
	_ = (fusefs.NodeOpener)((*writerNode)(nil))
	_ = (fusefs.NodeGetxattrer)((*writerNode)(nil))
	_ = (fusefs.NodeListxattrer)((*writerNode)(nil))
	_ = (fusefs.NodeSetxattrer)((*writerNode)(nil))
	_ = (fusefs.NodeRemovexattrer)((*writerNode)(nil))

	_ = (fusefs.FileWriter)((*writeHandle)(nil))
	_ = (fusefs.FileReader)((*writeHandle)(nil))
	_ = (fusefs.FileFlusher)((*writeHandle)(nil))
	_ = (fusefs.FileFsyncer)((*writeHandle)(nil))
	_ = (fusefs.FileReleaser)((*writeHandle)(nil))
)

// The control folder .flechefs and its files.
var (
	_ = (fusefs.InodeEmbedder)((*ctlDir)(nil))
	_ = (fusefs.NodeGetattrer)((*ctlDir)(nil))
	_ = (fusefs.NodeSetattrer)((*ctlDir)(nil))
	_ = (fusefs.NodeCreater)((*ctlDir)(nil))
	_ = (fusefs.NodeMkdirer)((*ctlDir)(nil))
	_ = (fusefs.NodeMknoder)((*ctlDir)(nil))
	_ = (fusefs.NodeSymlinker)((*ctlDir)(nil))
	_ = (fusefs.NodeLinker)((*ctlDir)(nil))
	_ = (fusefs.NodeUnlinker)((*ctlDir)(nil))
	_ = (fusefs.NodeRmdirer)((*ctlDir)(nil))
	_ = (fusefs.NodeRenamer)((*ctlDir)(nil))
	_ = (fusefs.NodeSetxattrer)((*ctlDir)(nil))
	_ = (fusefs.NodeRemovexattrer)((*ctlDir)(nil))

	_ = (fusefs.InodeEmbedder)((*ctlFile)(nil))
	_ = (fusefs.NodeGetattrer)((*ctlFile)(nil))
	_ = (fusefs.NodeSetattrer)((*ctlFile)(nil))
	_ = (fusefs.NodeOpener)((*ctlFile)(nil))
	_ = (fusefs.NodeSetxattrer)((*ctlFile)(nil))
	_ = (fusefs.NodeRemovexattrer)((*ctlFile)(nil))

	_ = (fusefs.FileReader)((bytesHandle)(nil))
)
