# SPDX-License-Identifier: Apache-2.0
# containerd's gRPC API for C++, generated at build time from Debian's copies
# of its .proto files (nothing generated is committed):
#   golang-github-containerd-containerd-dev  /usr/share/gocode/src/github.com/containerd/containerd/api
#   golang-github-gogo-protobuf-dev          gogoproto/gogo.proto (imported by every containerd proto)
#   libprotobuf-dev, protobuf-compiler       google/protobuf/*.proto, protoc
#   libgrpc++-dev, protobuf-compiler-grpc    grpc++, grpc_cpp_plugin
#
# containerd_api_library(TARGET) -> a static library TARGET (PIC, for the
# module) with the generated messages and stubs, its include directory public.
# Only the module (agent/runtime/containerd/) links it: dockquotad never links
# gRPC (README "Memory").

set(CONTAINERD_GOCODE "/usr/share/gocode/src" CACHE PATH "root of Debian's Go sources (containerd and gogo protos)")
set(_ctrd_missing "")
find_program(PROTOC_EXECUTABLE protoc)
find_program(GRPC_CPP_PLUGIN grpc_cpp_plugin)
find_package(PkgConfig REQUIRED)
pkg_check_modules(GRPCPP IMPORTED_TARGET grpc++)
pkg_check_modules(PROTOBUF IMPORTED_TARGET protobuf)
if(NOT PROTOC_EXECUTABLE)
  list(APPEND _ctrd_missing protobuf-compiler)
endif()
if(NOT GRPC_CPP_PLUGIN)
  list(APPEND _ctrd_missing protobuf-compiler-grpc)
endif()
if(NOT PROTOBUF_FOUND OR NOT EXISTS /usr/include/google/protobuf/any.proto)
  list(APPEND _ctrd_missing libprotobuf-dev)
endif()
if(NOT GRPCPP_FOUND)
  list(APPEND _ctrd_missing libgrpc++-dev)
endif()
set(_ctrd_api "github.com/containerd/containerd/api")
if(NOT EXISTS ${CONTAINERD_GOCODE}/${_ctrd_api}/services/events/v1/events.proto)
  list(APPEND _ctrd_missing golang-github-containerd-containerd-dev)
endif()
if(NOT EXISTS ${CONTAINERD_GOCODE}/github.com/gogo/protobuf/gogoproto/gogo.proto)
  list(APPEND _ctrd_missing golang-github-gogo-protobuf-dev)
endif()
if(_ctrd_missing)
  string(REPLACE ";" " " _ctrd_missing "${_ctrd_missing}")
  message(FATAL_ERROR "containerd module: missing Debian packages: ${_ctrd_missing} "
                      "(apt-get install -y ${_ctrd_missing}; deploy/packages.txt lists them)")
endif()
message(STATUS "containerd module: protoc ${PROTOBUF_VERSION}, grpc++ ${GRPCPP_VERSION}, protos from ${CONTAINERD_GOCODE}")

# The protos the module uses and what they import. Paths relative to
# CONTAINERD_GOCODE; gogo.proto relative to its own root.
set(CONTAINERD_PROTOS
    github.com/containerd/containerd/protobuf/plugin/fieldpath.proto
    ${_ctrd_api}/types/mount.proto
    ${_ctrd_api}/types/descriptor.proto
    ${_ctrd_api}/types/metrics.proto
    ${_ctrd_api}/types/platform.proto
    ${_ctrd_api}/types/task/task.proto
    ${_ctrd_api}/events/container.proto
    ${_ctrd_api}/events/task.proto
    ${_ctrd_api}/services/events/v1/events.proto
    ${_ctrd_api}/services/containers/v1/containers.proto
    ${_ctrd_api}/services/tasks/v1/tasks.proto
    ${_ctrd_api}/services/snapshots/v1/snapshots.proto)
set(_ctrd_services events containers tasks snapshots)

function(containerd_api_library target)
  set(src_dir ${CMAKE_CURRENT_BINARY_DIR}/containerd-proto)
  set(out_dir ${CMAKE_CURRENT_BINARY_DIR}/containerd-gen)
  set(inputs "")
  set(copies "")
  set(generated "")
  # protoc's C++ generator refuses `import weak` (a Google-internal feature:
  # "CHECK failed: !options_.opensource_runtime"), which every containerd and
  # gogo proto uses for its option files: copied with plain imports instead.
  foreach(p gogoproto/gogo.proto ${CONTAINERD_PROTOS})
    if(p STREQUAL "gogoproto/gogo.proto")
      set(in ${CONTAINERD_GOCODE}/github.com/gogo/protobuf/${p})
    else()
      set(in ${CONTAINERD_GOCODE}/${p})
    endif()
    string(REGEX REPLACE "\\.proto$" "" stem ${p})
    add_custom_command(
      OUTPUT ${src_dir}/${p}
      COMMAND ${CMAKE_COMMAND} -DIN=${in} -DOUT=${src_dir}/${p} -P ${PROJECT_SOURCE_DIR}/cmake/StripWeakImport.cmake
      DEPENDS ${in} ${PROJECT_SOURCE_DIR}/cmake/StripWeakImport.cmake
      COMMENT "containerd proto ${p}" VERBATIM)
    list(APPEND copies ${src_dir}/${p})
    list(APPEND inputs ${p})
    list(APPEND generated ${out_dir}/${stem}.pb.cc ${out_dir}/${stem}.pb.h)
    foreach(s ${_ctrd_services})
      if(p MATCHES "/services/${s}/v1/")
        list(APPEND generated ${out_dir}/${stem}.grpc.pb.cc ${out_dir}/${stem}.grpc.pb.h)
      endif()
    endforeach()
  endforeach()
  add_custom_command(
    OUTPUT ${generated}
    COMMAND ${CMAKE_COMMAND} -E make_directory ${out_dir}
    COMMAND ${PROTOC_EXECUTABLE} -I/usr/include -I${src_dir} --cpp_out=${out_dir} --grpc_out=${out_dir}
            --plugin=protoc-gen-grpc=${GRPC_CPP_PLUGIN} ${inputs}
    DEPENDS ${copies}
    COMMENT "protoc: containerd API (C++ and gRPC stubs)" VERBATIM)
  set(sources ${generated})
  list(FILTER sources INCLUDE REGEX "\\.cc$")
  add_library(${target} STATIC ${sources})
  set_target_properties(${target} PROPERTIES POSITION_INDEPENDENT_CODE ON)
  # Generated code: not ours to warn about.
  target_compile_options(${target} PRIVATE -w)
  target_include_directories(${target} SYSTEM PUBLIC ${out_dir})
  target_link_libraries(${target} PUBLIC PkgConfig::GRPCPP PkgConfig::PROTOBUF)
endfunction()
