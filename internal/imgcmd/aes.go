package imgcmd

// Legacy AES qcow2 encryption in qemu-img create (encryption=on or
// encrypt.format=aes): the only option is the key secret, which must name
// a secret object, as in qemu-img 7.2. The image stores nothing but
// crypt_method 1 (drivers/qcow2/aes.go).

import (
	"fmt"

	"github.com/ringblk/ringblk/internal/cli"
)

// setupAES checks the options of a legacy AES image: encrypt.key-secret
// given and found, no LUKS option.
func (e *qcowEncrypt) setupAES(objs *cli.Objects) error {
	for _, k := range luksKeys {
		if _, ok := e.lo.given[k]; ok && k != "key-secret" {
			return fmt.Errorf("Invalid parameter '%s'", k)
		}
	}
	if objs == nil { // measure: nothing to look up
		return nil
	}
	id, ok := e.lo.given["key-secret"]
	if !ok {
		return fmt.Errorf("Parameter 'encrypt.key-secret' is required for cipher")
	}
	_, err := objs.Secret(id)
	return err
}
