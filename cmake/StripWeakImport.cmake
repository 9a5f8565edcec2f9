# SPDX-License-Identifier: Apache-2.0
# cmake -DIN=a.proto -DOUT=b.proto -P StripWeakImport.cmake: copies a proto,
# `import weak "x";` made `import "x";` (see ContainerdApi.cmake for why).
file(READ ${IN} text)
string(REGEX REPLACE "import weak " "import " text "${text}")
file(WRITE ${OUT} "${text}")
