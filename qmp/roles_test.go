package qmp

import "github.com/ringblk/ringblk/block"

type blockRole = block.Role

const roleBacking = block.RoleBacking
