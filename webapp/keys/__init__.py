"""Key rotation on the web app's side: ciphertexts counted per key version, the resumable rewrap job,
and the retire guard (`flask --app webapp keys versions|rewrap|retire`).

The key itself never comes here: rewrap sends each ciphertext to keyd and gets a new ciphertext back.
"""
