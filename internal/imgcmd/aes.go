package imgcmd

// Legacy AES qcow2 encryption in qemu-img create (encryption=on or
// encrypt.format=aes): the only option is the key secret, which must name
// a secret object, as in qemu-img 7.2. The image stores nothing but
// crypt_method 1 (drivers/qcow2/aes.go).

import (
	"errors"
	"fmt"

	"github.com/ringblk/ringblk/drivers/qcow2/format"
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

// errCompressEncrypt is qemu-img convert's refusal of -c with an
// encrypted target (legacy AES or LUKS), before the target is created.
var errCompressEncrypt = errors.New("Compression and encryption not supported at the same time")

// convertEncrypts reports whether convert's -o options make an encrypted
// target: encryption=on, or any encrypt.format.
func convertEncrypts(olist []string) bool {
	pairs, _, err := format.SplitOptionList(olist)
	if err != nil {
		return false // the create reports it
	}
	enc := false
	for _, p := range pairs {
		switch p.Key {
		case "encryption":
			enc = p.Value == "on"
		case "encrypt.format":
			enc = true
		}
	}
	return enc
}
