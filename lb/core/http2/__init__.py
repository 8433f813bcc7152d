"""lb's own sans-IO HTTP/2 (RFC 9113), in place of the h2 library on the hot path; h2, hpack
and hyperframe stay as the references of the differential tests.

The modules:
  frames.py    frames (RFC 9113 sections 4 and 6): a reader with the header-block assembly
               and its bounds, and the writers of what lb sends
  huffman.py   HPACK's Huffman code: encode, and decode by a table of octet steps
  hpack.py     HPACK (RFC 7541): the header block decoder, integer and string encoding
  streams.py   stream states (a table), the record of closed streams, receive windows
  connection.py  the server side of a connection: bytes in, events out; lb's calls in, bytes out
"""
