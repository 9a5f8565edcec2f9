# SPDX-License-Identifier: Apache-2.0
# bpf_object(<name> <source.bpf.c> [HEADERS h...])
#
# Compiles a CO-RE BPF object with clang -target bpf, links it with
# `bpftool gen object` and generates `<name>.skel.h` with `bpftool gen skeleton`.
# Creates an INTERFACE target `<name>_skel` whose include dir holds the skeleton.
# Shaped like libbpf-bootstrap's tools/cmake/FindBpfObject.cmake.

find_program(BPF_CLANG NAMES clang-14 clang REQUIRED)
find_program(BPFTOOL NAMES bpftool PATHS /usr/sbin /usr/local/sbin REQUIRED)

execute_process(COMMAND ${BPF_CLANG} --version OUTPUT_VARIABLE _clang_ver OUTPUT_STRIP_TRAILING_WHITESPACE)
string(REGEX MATCH "version ([0-9]+)" _m "${_clang_ver}")
if(CMAKE_MATCH_1 LESS 11)
  message(FATAL_ERROR "bpf: clang ${CMAKE_MATCH_1} is too old; CO-RE needs clang >= 11")
endif()
message(STATUS "bpf: clang ${CMAKE_MATCH_1} at ${BPF_CLANG}")
execute_process(COMMAND ${BPFTOOL} version OUTPUT_VARIABLE _bpftool_ver OUTPUT_STRIP_TRAILING_WHITESPACE)
string(REGEX MATCH "v[0-9.]+" _bv "${_bpftool_ver}")
message(STATUS "bpf: bpftool ${_bv} at ${BPFTOOL}")

# Clang's own system include dirs, so <linux/...> types resolve for -target bpf
# (libbpf-bootstrap does the same).
execute_process(COMMAND ${BPF_CLANG} -v -E - INPUT_FILE /dev/null
                ERROR_VARIABLE _clang_v OUTPUT_QUIET)
string(REGEX MATCH "#include <...> search starts here:\n(.*)\nEnd of search list." _ "${_clang_v}")
string(REPLACE "\n" ";" _sys_dirs "${CMAKE_MATCH_1}")
set(BPF_SYS_INCLUDES "")
foreach(d ${_sys_dirs})
  string(STRIP "${d}" d)
  list(APPEND BPF_SYS_INCLUDES -idirafter ${d})
endforeach()

# The architecture the BPF objects are built for: it picks the syscall numbers,
# the syscall wrapper names fexit attaches to and the pt_regs layout
# (bpf/lib/syscall.bpf.h, via -D__TARGET_ARCH_<arch>) and bpf/vmlinux/<arch>/.
# The objects only load on a kernel of that architecture.
if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$")
  set(_bpf_host_arch x86)
elseif(CMAKE_SYSTEM_PROCESSOR MATCHES "^(aarch64|arm64|ARM64)$")
  set(_bpf_host_arch arm64)
else()
  set(_bpf_host_arch "")
endif()
set(DOCKQUOTA_BPF_ARCH "${_bpf_host_arch}" CACHE STRING "x86|arm64: target architecture of the BPF objects (default: the host's)")
set_property(CACHE DOCKQUOTA_BPF_ARCH PROPERTY STRINGS x86 arm64)
if(NOT DOCKQUOTA_BPF_ARCH MATCHES "^(x86|arm64)$")
  message(FATAL_ERROR "bpf: DOCKQUOTA_BPF_ARCH='${DOCKQUOTA_BPF_ARCH}' (host ${CMAKE_SYSTEM_PROCESSOR}): set it to x86 or arm64")
endif()
message(STATUS "bpf: target arch ${DOCKQUOTA_BPF_ARCH} (host ${CMAKE_SYSTEM_PROCESSOR})")

# Flags of every BPF compile but the arch and vmlinux.h ones (also used by the
# arm64 build check, tests/tools/bpf_arch_check.sh).
set(BPF_CFLAGS -g -O2 -target bpf -Wall -Werror)

set(VMLINUX_H "provided" CACHE STRING "provided|generated: use bpf/vmlinux/<arch>/vmlinux.h or dump this host's BTF")
set_property(CACHE VMLINUX_H PROPERTY STRINGS provided generated)
if(VMLINUX_H STREQUAL "generated")
  set(BPF_VMLINUX_DIR ${CMAKE_BINARY_DIR}/vmlinux)
  file(MAKE_DIRECTORY ${BPF_VMLINUX_DIR})
  execute_process(COMMAND ${BPFTOOL} btf dump file /sys/kernel/btf/vmlinux format c
                  OUTPUT_FILE ${BPF_VMLINUX_DIR}/vmlinux.h RESULT_VARIABLE _rc)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "bpf: VMLINUX_H=generated but dumping /sys/kernel/btf/vmlinux failed")
  endif()
  if(NOT DOCKQUOTA_BPF_ARCH STREQUAL _bpf_host_arch)
    message(FATAL_ERROR "bpf: VMLINUX_H=generated dumps this ${_bpf_host_arch} host's BTF; "
                        "DOCKQUOTA_BPF_ARCH=${DOCKQUOTA_BPF_ARCH} needs VMLINUX_H=provided")
  endif()
else()
  set(BPF_VMLINUX_DIR ${PROJECT_SOURCE_DIR}/bpf/vmlinux/${DOCKQUOTA_BPF_ARCH})
endif()
message(STATUS "bpf: vmlinux.h ${VMLINUX_H} (${BPF_VMLINUX_DIR})")

function(bpf_object name src)
  cmake_parse_arguments(BO "" "" "HEADERS" ${ARGN})
  set(out ${CMAKE_CURRENT_BINARY_DIR}/bpf)
  set(tmp_obj ${out}/${name}.tmp.bpf.o)
  set(obj ${out}/${name}.bpf.o)
  set(skel ${out}/${name}.skel.h)
  set(deps ${src})
  foreach(h ${BO_HEADERS})
    list(APPEND deps ${PROJECT_SOURCE_DIR}/${h})
  endforeach()
  file(GLOB lib_headers ${PROJECT_SOURCE_DIR}/bpf/lib/*.bpf.h)
  add_custom_command(
    OUTPUT ${skel} ${obj}
    COMMAND ${CMAKE_COMMAND} -E make_directory ${out}
    COMMAND ${BPF_CLANG} ${BPF_CFLAGS} -D__TARGET_ARCH_${DOCKQUOTA_BPF_ARCH}
            -I${BPF_VMLINUX_DIR} -I${PROJECT_SOURCE_DIR}/bpf ${BPF_SYS_INCLUDES}
            -c ${PROJECT_SOURCE_DIR}/${src} -o ${tmp_obj}
    COMMAND ${BPFTOOL} gen object ${obj} ${tmp_obj}
    COMMAND ${BPFTOOL} gen skeleton ${obj} name ${name}_bpf > ${skel}
    DEPENDS ${deps} ${lib_headers}
    COMMENT "bpf: building ${name}.bpf.o and its skeleton"
    VERBATIM)
  add_custom_target(${name}_skel_gen DEPENDS ${skel})
  add_library(${name}_skel INTERFACE)
  add_dependencies(${name}_skel ${name}_skel_gen)
  target_include_directories(${name}_skel INTERFACE ${out} ${PROJECT_SOURCE_DIR}/bpf)
  set_property(GLOBAL APPEND PROPERTY DOCKQUOTA_BPF_OBJECTS ${obj})
endfunction()
