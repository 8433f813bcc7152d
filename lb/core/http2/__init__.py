"""lb's own sans-IO HTTP/2 (RFC 9113), in place of the h2 library on the hot path; h2, hpack
and hyperframe stay as the references of the differential tests.

The modules:
  huffman.py   HPACK's Huffman code: encode, and decode by a table of octet steps
  hpack.py     HPACK (RFC 7541): the header block decoder, integer and string encoding
"""
